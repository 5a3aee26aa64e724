"""The run summary both sides share: built by the trainer, parsed by the operator."""

from __future__ import annotations

import json
from pathlib import Path

from kubetune.api.facts import ModelFacts
from kubetune.catalog import presets
from kubetune.contract import (
    EngineFacts,
    Figures,
    FinalFigures,
    HistoryRecord,
    RunSummary,
    SampleAnswers,
    SummaryOutput,
)

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


STORED = Path(__file__).parent / "stored"
"""What version 0.1.0's trainer wrote for a sequence classifier (LoRA, 10 steps, tiny-phi3)."""


def test_a_summary_of_the_previous_version_reads_back_typed_and_writes_the_same_json() -> None:
    text = (STORED / "classifier-summary.json").read_text()

    summary = RunSummary.parse(text)

    assert summary.metrics is not None and summary.baseline is not None
    assert (summary.metrics.steps, summary.metrics.precision, summary.metrics.wall_seconds) == (10, "fp32", 27.43)
    assert summary.metrics.task_figures == {"evalAccuracy": 1.0, "evalMacroF1": 1.0}
    assert summary.baseline.task_figures == {"evalAccuracy": 0.125, "evalMacroF1": 0.09166666666666667}
    assert summary.engine == EngineFacts(
        engine="PeftModelForSequenceClassification",
        world_size=1,
        parameter_elements=134080,
        local_parameter_elements=134080,
    )
    assert summary.data is not None and (summary.data.format, summary.data.kept) == ("text-label", 16)
    assert summary.history is not None and [r.step for r in summary.history] == [0, 1, 5, 10, 10, 10]
    assert summary.history[0].eval_loss == 2.205108642578125
    assert summary.samples is not None and summary.samples[0].after == "weather"
    assert summary.confusion is not None and len(summary.confusion.matrix) == 4
    assert json.loads(summary.dumps()) == json.loads(text)


def test_history_lines_of_the_previous_version_write_back_byte_for_byte() -> None:
    for line in (STORED / "classifier-metrics.jsonl").read_text().splitlines():
        assert json.dumps(HistoryRecord.model_validate_json(line).as_json()) == line


def test_a_termination_message_of_the_previous_version_gives_the_final_figures() -> None:
    summary = RunSummary.parse((STORED / "classifier-termination-message.json").read_text())

    figures = FinalFigures.from_summary(summary)

    assert (figures.steps, figures.train_loss, figures.eval_loss) == (10, 0.15583764314651488, 0.10160224139690399)
    assert figures.numbers["evalAccuracy"] == 1.0
    assert "precision" not in figures.numbers


def test_a_figure_that_does_not_validate_is_left_out_alone() -> None:
    text = json.dumps({"status": "Succeeded", "metrics": {"steps": 10, "trainLoss": "low", "evalF1": [1], "x": 2}})

    summary = RunSummary.parse(text)

    assert summary.metrics == Figures.model_validate({"steps": 10, "x": 2})


def test_a_history_record_or_sample_that_does_not_validate_is_left_out_alone() -> None:
    history = [None, {"step": 1, "loss": "nan?"}, {"step": 2, "loss": 0.5}, {"loss": 0.4}]
    samples = [{"prompt": "p", "expected": "e", "after": "a"}, {"prompt": "p"}]

    summary = RunSummary.parse(json.dumps({"status": "Succeeded", "history": history, "samples": samples}))

    assert summary.history == [HistoryRecord(step=2, loss=0.5)]
    assert summary.samples == [SampleAnswers(prompt="p", expected="e", after="a")]


def test_a_part_that_is_only_whole_when_complete_is_left_out_whole() -> None:
    text = json.dumps(
        {
            "status": "Succeeded",
            "engine": {"engine": "DeepSpeedEngine", "parameterElements": 10, "localParameterElements": 5},
            "confusion": {"labels": ["no", "yes"], "matrix": [[1, 0], [0]]},
            "data": {"examples": 2, "kept": "two"},
        }
    )

    summary = RunSummary.parse(text)

    assert (summary.engine, summary.confusion, summary.data) == (None, None, None)
    assert summary.status == "Succeeded"


def test_a_task_figure_needs_no_field_and_travels_flat_beside_the_others() -> None:
    figures = Figures.model_validate({"steps": 3, "evalRewardAccuracy": 0.75})

    assert figures.task_figures == {"evalRewardAccuracy": 0.75}
    assert figures.as_json() == {"steps": 3, "evalRewardAccuracy": 0.75}
    assert figures.numbers() == {"steps": 3.0, "evalRewardAccuracy": 0.75}
