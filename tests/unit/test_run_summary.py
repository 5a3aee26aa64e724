"""The run summary both sides share: built by the trainer, parsed by the operator."""

from __future__ import annotations

import json

from kubetune.api.facts import ModelFacts
from kubetune.catalog import presets
from kubetune.contract import FinalFigures, RunSummary, SummaryOutput

FACTS = ModelFacts.of_preset(next(iter(presets().values()))).model_dump(mode="json", by_alias=True)


def test_the_json_form_leaves_absent_fields_out_and_reads_back_the_same() -> None:
    summary = RunSummary(
        status="Succeeded",
        reason="Completed",
        message="trained 4 steps on 8 examples",
        output=SummaryOutput(location="pvc://results/demo", formats=["adapter"]),
        metrics={"steps": 4, "trainLoss": 0.5},
    )

    written = json.loads(summary.dumps())

    assert list(written) == ["status", "reason", "message", "output", "metrics"]
    assert written["output"] == {"location": "pvc://results/demo", "formats": ["adapter"]}
    assert RunSummary.parse(summary.dumps()) == summary


def test_a_failure_carries_the_outcome_alone() -> None:
    assert RunSummary.failure("DatasetInvalid", "line 1: bad").as_json() == {
        "status": "Failed",
        "reason": "DatasetInvalid",
        "message": "line 1: bad",
    }


def test_text_that_is_not_a_json_object_is_no_summary() -> None:
    for text in ("", "Error: exec format error", "[1, 2]", '"Succeeded"'):
        summary = RunSummary.parse(text)
        assert summary == RunSummary()
        assert not summary.reported


def test_a_field_that_does_not_validate_is_left_out_and_the_rest_kept() -> None:
    text = json.dumps({"status": "Succeeded", "reason": "DataValid", "modelFacts": {"layers": "many"}, "labels": 3})

    summary = RunSummary.parse(text)

    assert (summary.status, summary.reason) == ("Succeeded", "DataValid")
    assert summary.model_facts is None
    assert summary.labels is None
    assert summary.reported


def test_model_facts_travel_camel_case_and_come_back_typed() -> None:
    summary = RunSummary.parse(json.dumps({"status": "Succeeded", "modelFacts": FACTS}))

    assert summary.model_facts == ModelFacts.model_validate(FACTS)
    assert summary.as_json()["modelFacts"] == summary.model_facts.model_dump(by_alias=True, exclude_none=True)


def test_final_figures_keep_only_finite_numbers() -> None:
    summary = RunSummary(metrics={"steps": 40, "trainLoss": float("nan"), "precision": "bf16", "evalLoss": 0.25})

    figures = FinalFigures.from_summary(summary)

    assert (figures.steps, figures.train_loss, figures.eval_loss) == (40, None, 0.25)
    assert figures.numbers == {"steps": 40.0, "evalLoss": 0.25}
    assert FinalFigures.from_summary(RunSummary()) == FinalFigures()
