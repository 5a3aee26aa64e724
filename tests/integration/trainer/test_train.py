"""Every single-process row of the support matrix: train a tiny Phi-3 on a memorisable
set, assert that the loss falls and that each saved output reloads and answers from memory
(how each method shapes the model is checked without training, in tests/unit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetune.api import MethodType
from kubetune.catalog import Strategy, support_matrix
from kubetune.contract import ExitCode, RunSummary
from kubetune_trainer.main import run

from .conftest import (
    FACTS,
    greedy_answer,
    memorise_spec,
    reload_output,
    runtime_in,
    summary_in,
    training_losses,
)

pytestmark = pytest.mark.slow

BUILT_OUTPUTS = {"adapter", "merged", "onnx"}
# A row another covers (onnx is exported after the two kinds of merge: lora's and full's) is not run again.
ROWS = [
    r
    for r in support_matrix()
    if r.strategy is Strategy.SINGLE and r.supported and r.output in BUILT_OUTPUTS and r.covered_by is None
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, volumes: Path) -> dict[str, tuple[Path, RunSummary]]:
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
    row: Any, trained: dict[str, tuple[Path, RunSummary]], volumes: Path
) -> None:
    out, summary = trained[row.method]
    losses = training_losses(summary)

    assert losses[-1] < losses[0] / 10, losses
    unreadable = [p.name for p in out.rglob("*") if p.is_file() and not p.stat().st_mode & 0o004]
    assert unreadable == [], "a serving pod of another user could not read these"
    model, tokenizer = reload_output(row.output, out, volumes)
    question, answer = FACTS[3]
    assert greedy_answer(model, tokenizer, question) == answer


def test_summary_records_data_and_metrics(trained: dict[str, tuple[Path, RunSummary]]) -> None:
    out, summary = trained["lora"]

    assert summary.data is not None and summary.metrics is not None
    assert (summary.data.examples, summary.data.format) == (len(FACTS), "chat")
    assert summary.metrics.steps == 60
    assert (summary.metrics.tokens_per_second or 0) > 0
    assert summary_in(out).status == "Succeeded"
    assert (out / "metrics.jsonl").read_text().count("\n") >= 6
    card = (out / "README.md").read_text()
    assert "Trained by kubetune with **lora** (r 16, alpha 32" in card
    assert "examples: 8 read, 8 trained on" in card
    assert "PeftModel.from_pretrained" in card
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.html").read_text()
    assert 'src="data:image/png;base64,' in report
    assert f"<td>{FACTS[0][0]}</td>" in report
