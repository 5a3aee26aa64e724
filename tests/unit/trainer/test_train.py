"""Every single-process row of the support matrix: train a tiny Phi-3 on a memorisable
set, assert that the loss falls, that the method shaped the model as it should, and that
each saved output reloads and answers from memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import MethodType
from kubetune.catalog import Strategy, support_matrix
from kubetune.contract import ExitCode
from kubetune_trainer.main import run
from kubetune_trainer.runtime import Runtime

from .conftest import FACTS, greedy_answer, memorise_spec, reload_output, runtime_in

pytestmark = pytest.mark.slow

BUILT_OUTPUTS = {"adapter", "merged", "onnx"}
ROWS = [r for r in support_matrix() if r.strategy is Strategy.SINGLE and r.supported and r.output in BUILT_OUTPUTS]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, volumes: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """One run per method, writing every built output format it supports."""
    runs = {}
    for method in MethodType:
        formats = sorted({r.output for r in ROWS if r.method == method})
        folder = tmp_path_factory.mktemp(f"run-{method.value}")
        runtime = runtime_in(volumes, folder)
        code, summary = run(memorise_spec(method.value, formats), runtime)
        assert code is ExitCode.OK, summary
        runs[method.value] = (folder / "out", summary)
    return runs


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.method}-{r.output}" for r in ROWS])
def test_row_trains_and_its_output_answers_from_memory(
    row: Any, trained: dict[str, tuple[Path, dict[str, Any]]], volumes: Path
) -> None:
    out, summary = trained[row.method]
    losses = [h["loss"] for h in summary.history if "loss" in h]

    assert losses[-1] < losses[0] / 10, losses
    model, tokenizer = reload_output(row.output, out, volumes)
    question, answer = FACTS[3]
    assert greedy_answer(model, tokenizer, question) == answer


@pytest.mark.parametrize("method", list(MethodType))
def test_method_shapes_the_model(method: MethodType, volumes: Path, runtime: Runtime) -> None:
    from kubetune_trainer.model import apply_method, load_model, resolve_source, trainable_parameters

    spec = memorise_spec(method.value, ["merged"] if method is MethodType.FULL else ["adapter"])
    source = resolve_source(spec, runtime)
    from kubetune.api import Precision

    model = apply_method(load_model(spec, source, Precision.BF16, runtime), spec, source)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    trained_count, total = trainable_parameters(model)

    if method is MethodType.FULL:
        assert trained_count == total
        return
    assert trainable and all("lora_" in name for name in trainable)
    assert any("lora_magnitude_vector" in name for name in trainable) == (method is MethodType.DORA)
    if method is MethodType.QLORA:
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def test_summary_records_data_and_metrics(trained: dict[str, tuple[Path, dict[str, Any]]]) -> None:
    out, summary = trained["lora"]

    assert summary.data["examples"] == len(FACTS)
    assert summary.data["format"] == "chat"
    assert summary.metrics["steps"] == 60
    assert summary.metrics["tokensPerSecond"] > 0
    assert json.loads((out / "summary.json").read_text())["status"] == "Succeeded"
    assert (out / "metrics.jsonl").read_text().count("\n") >= 6
    card = (out / "README.md").read_text()
    assert "Trained by kubetune with **lora** (r 16, alpha 32" in card
    assert "examples: 8 read, 8 trained on" in card
    assert "PeftModel.from_pretrained" in card
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.html").read_text()
    assert 'src="data:image/png;base64,' in report
    assert f"<td>{FACTS[0][0]}</td>" in report
