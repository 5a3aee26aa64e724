"""What a preference run's samples say of a held-out pair: the answer preferred by
log-probability, and after training how far the gap moved, which is what dpo's reward measures."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune_trainer.samples import Sample, fill
from kubetune_trainer.tasks import preference
from kubetune_trainer.tasks.preference import Preferred, describe


def test_the_first_answer_gives_the_preferred_answer_and_both_figures() -> None:
    assert describe(-10.0, -12.5, None) == "prefers the chosen answer (log-probability -10.00 chosen, -12.50 rejected)"


@pytest.mark.parametrize(
    ("first_gap", "said"),
    [(-9.0, "the gap moved 3.21 towards the chosen"), (-3.0, "the gap moved 2.79 away from the chosen")],
)
def test_a_later_answer_says_how_far_the_gap_moved_since_the_first(first_gap: float, said: str) -> None:
    # Preferred the wrong way by log-probability (the chosen is the longer answer), yet moved.
    answer = describe(-141.4, -135.61, first_gap)

    assert answer.startswith("prefers the rejected answer (log-probability -141.40 chosen, -135.61 rejected; ")
    assert answer.endswith(f"{said} since before)")


def test_a_gap_that_did_not_move_says_so() -> None:
    assert describe(-10.0, -12.5, 2.501).endswith("-12.50 rejected; the gap is where it was before)")


def test_each_sample_s_move_is_measured_from_its_own_answer_before(monkeypatch: pytest.MonkeyPatch) -> None:
    figures = iter([(-5.0, -6.0), (-8.0, -7.0), (-4.0, -6.0), (-8.0, -9.0)])
    monkeypatch.setattr(preference, "log_probabilities", lambda model, tokenizer, pair: next(figures))
    samples = [Sample("p1", "a1", example=object()), Sample("p2", "a2", example=object())]
    respond: Any = Preferred(model=None, tokenizer=None)

    fill(samples, respond, "before")
    fill(samples, respond, "after")

    assert samples[0].before.startswith("prefers the chosen") and samples[1].before.startswith("prefers the rejected")
    assert "the gap moved 1.00 towards the chosen" in samples[0].after  # from 1 to 2
    assert "the gap moved 2.00 towards the chosen" in samples[1].after  # from -1 to 1
