from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.contract import TERMINATION_MESSAGE_LIMIT, FinalFigures, RunSummary
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
    message = json.loads(termination_message(RunSummary.from_json(SUCCESS)))

    assert message == {k: SUCCESS[k] for k in ("status", "reason", "message", "output", "metrics")}


@pytest.mark.parametrize("length", [100, 4000, 10_000, 1_000_000])
def test_a_long_error_is_cut_with_a_marker_under_the_cap(length: int) -> None:
    failure = {"status": "Failed", "reason": "DatasetInvalid", "message": "x" * length}

    text = termination_message(RunSummary.from_json(failure))
    message = json.loads(text)

    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    assert message["reason"] == "DatasetInvalid"
    assert message["message"].endswith(TRUNCATED) == (length > 4000)


def test_multibyte_messages_stay_valid_json_under_the_cap() -> None:
    failure = {"status": "Failed", "reason": "TrainingFailed", "message": "é€😀" * 3000}

    text = termination_message(RunSummary.from_json(failure))

    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    assert json.loads(text)["message"].endswith(TRUNCATED)


def _overflowing(message: str = "trained 60 steps on 8 examples") -> dict[str, Any]:
    """A success whose task metrics alone are over the cap (a classifier's per-label figures)."""
    per_label = {f"evalF1Label{i:04d}": 0.5 + i / 10_000 for i in range(400)}
    return {
        **SUCCESS,
        "message": message,
        "output": {"location": "s3://models/runs/demo", "formats": ["adapter", "merged"]},
        "metrics": {"trainableParameters": 4_194_304, **SUCCESS["metrics"], "evalAccuracy": 0.91, **per_label},
    }


@pytest.mark.parametrize("message", ["trained 60 steps on 8 examples", "y" * 10_000])
def test_overflowing_metrics_are_shed_before_what_the_status_needs(message: str) -> None:
    summary = _overflowing(message)

    text = termination_message(RunSummary.from_json(summary))
    kept = json.loads(text)

    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    assert (kept["status"], kept["reason"]) == ("Succeeded", "Completed")
    assert kept["output"]["location"] == "s3://models/runs/demo"
    figures = FinalFigures.from_summary(RunSummary.from_json(kept))
    assert (figures.steps, figures.train_loss, figures.eval_loss) == (60, 0.06, 0.3)
    assert kept["message"] == message or kept["message"].endswith(TRUNCATED)
    assert len(kept["metrics"]) < len(summary["metrics"])
    assert all(kept["metrics"][name] == summary["metrics"][name] for name in kept["metrics"])


def test_a_short_message_is_kept_whole_and_the_room_left_holds_more_metrics() -> None:
    kept = json.loads(termination_message(RunSummary.from_json(_overflowing())))

    assert kept["message"] == "trained 60 steps on 8 examples"
    assert kept["output"]["formats"] == ["adapter", "merged"]
    assert kept["metrics"]["evalAccuracy"] == 0.91


def test_the_termination_message_of_a_stored_summary_is_the_one_the_previous_version_wrote() -> None:
    stored = Path(__file__).parents[1] / "stored"
    summary = RunSummary.parse((stored / "classifier-summary.json").read_text())

    message = termination_message(summary)

    assert json.loads(message) == json.loads((stored / "classifier-termination-message.json").read_text())
