from __future__ import annotations

import json

import pytest

from kubetune.contract import TERMINATION_MESSAGE_LIMIT
from kubetune_trainer.summary import TRUNCATED, termination_message

SUCCESS = {
    "status": "Succeeded",
    "reason": "Completed",
    "message": "trained 60 steps on 8 examples",
    "output": {"location": "pvc://results/run", "formats": ["adapter"]},
    "metrics": {"steps": 60, "trainLoss": 0.06, "evalLoss": 0.3},
    "history": [{"step": i, "loss": 1.0} for i in range(5000)],
}


def test_success_keeps_outcome_output_and_metrics_but_not_the_history() -> None:
    message = json.loads(termination_message(SUCCESS))

    assert message == {k: SUCCESS[k] for k in ("status", "reason", "message", "output", "metrics")}


@pytest.mark.parametrize("length", [100, 4000, 10_000, 1_000_000])
def test_a_long_error_is_cut_with_a_marker_under_the_cap(length: int) -> None:
    failure = {"status": "Failed", "reason": "DatasetInvalid", "message": "x" * length}

    text = termination_message(failure)
    message = json.loads(text)

    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    assert message["reason"] == "DatasetInvalid"
    assert message["message"].endswith(TRUNCATED) == (length > 4000)


def test_multibyte_messages_stay_valid_json_under_the_cap() -> None:
    failure = {"status": "Failed", "reason": "TrainingFailed", "message": "é€😀" * 3000}

    text = termination_message(failure)

    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    assert json.loads(text)["message"].endswith(TRUNCATED)
