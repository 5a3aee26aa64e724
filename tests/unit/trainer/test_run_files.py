"""The files a finished run leaves beside its outputs (model card, report, summary.json) are
made from its summary and spec alone: checked here on fixture summaries, without training."""

from __future__ import annotations

import json
from pathlib import Path

from kubetune.contract import (
    Confusion,
    DataSummary,
    EngineFacts,
    Figures,
    HistoryRecord,
    RunSummary,
    SampleAnswers,
    SummaryOutput,
)
from kubetune_trainer.card import model_card
from kubetune_trainer.train import write_run_files

from .conftest import memorise_spec, task_spec

DATA = DataSummary(
    format="chat",
    examples=8,
    kept=8,
    truncated=0,
    dropped_too_long=0,
    dropped_nothing_to_learn=0,
    tokens=400,
    trainable_tokens=120,
    longest=60,
    default_chat_template=False,
)
HISTORY = [
    HistoryRecord(step=0, eval_loss=2.5),
    HistoryRecord(step=5, loss=2.0, learning_rate=1e-4, tokens_per_second=800.0),
    HistoryRecord(step=10, loss=0.5, learning_rate=2e-4, tokens_per_second=900.0),
]
METRICS = Figures(steps=10, train_loss=0.5, eval_loss=0.75, tokens_per_second=850.0, precision="fp32")
ADAPTER_RUN = RunSummary(
    status="Succeeded",
    reason="Completed",
    message="trained 10 steps on 8 examples",
    output=SummaryOutput(location="pvc://results/demo", formats=["adapter", "merged"]),
    metrics=METRICS,
    engine=EngineFacts(
        engine="PeftModelForCausalLM", world_size=1, parameter_elements=900, local_parameter_elements=900
    ),
    data=DATA,
    model="tiny-phi3",
    method="lora",
    task="causal-lm",
    baseline=Figures(eval_loss=2.5),
    history=HISTORY,
    samples=[SampleAnswers(prompt="capital of France?", expected="Paris", before="", after="Paris")],
)
CLASSIFIER_RUN = ADAPTER_RUN.model_copy(
    update={
        "task": "sequence-classification",
        "metrics": Figures.model_validate(METRICS.as_json() | {"evalAccuracy": 0.75}),
        "baseline": Figures.model_validate({"evalLoss": 1.4, "evalAccuracy": 0.25}),
        "labels": ["no", "yes"],
        "confusion": Confusion(labels=["no", "yes"], matrix=[[3, 1], [1, 3]]),
        "output": SummaryOutput(location="pvc://results/demo", formats=["adapter"]),
    }
)


def test_the_card_says_what_was_trained_how_and_how_well() -> None:
    card = model_card(memorise_spec("lora", ["adapter", "merged"]), ADAPTER_RUN)

    assert "base_model: tiny-phi3" in card
    assert "library_name: peft" in card
    assert "- format: chat; examples: 8 read, 8 trained on" in card
    assert "- engine: PeftModelForCausalLM on 1 process(es)" in card
    assert "- final training loss: 0.5" in card
    assert "`adapter/`: load with" in card and "`merged/`: load with" in card
    assert "Labels, in id order" not in card


def test_a_classifiers_card_names_its_labels_and_its_figures_before_and_after() -> None:
    spec = task_spec("sequence-classification", "tiny-bert", "topics", "lora", ["adapter"])

    card = model_card(spec, CLASSIFIER_RUN)

    assert "Labels, in id order: no, yes" in card
    assert "- evalAccuracy: 0.25 before training, 0.75 after" in card
    assert "num_labels=len(labels)" in card
    assert "`merged/`" not in card


def test_the_run_files_are_written_from_the_summary_and_read_back_the_same(tmp_path: Path) -> None:
    spec = task_spec("sequence-classification", "tiny-bert", "topics", "lora", ["adapter"])

    write_run_files(CLASSIFIER_RUN, spec, tmp_path)

    assert {p.name for p in tmp_path.iterdir()} == {
        "README.md",
        "summary.json",
        "report.html",
        "loss.png",
        "confusion.png",
    }
    assert RunSummary.parse((tmp_path / "summary.json").read_text()) == CLASSIFIER_RUN
    assert json.loads((tmp_path / "summary.json").read_text())["confusion"]["matrix"] == [[3, 1], [1, 3]]
    assert (tmp_path / "README.md").read_text() == model_card(spec, CLASSIFIER_RUN)
    page = (tmp_path / "report.html").read_text()
    assert "<tr><th>evalAccuracy</th><td>0.25</td><td>0.75</td></tr>" in page
    assert "capital of France?" in page


def test_a_run_without_classes_leaves_no_confusion_picture(tmp_path: Path) -> None:
    write_run_files(ADAPTER_RUN, memorise_spec("lora", ["adapter", "merged"]), tmp_path)

    assert not (tmp_path / "confusion.png").exists()
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
