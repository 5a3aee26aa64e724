"""The paths only a CUDA machine exercises: QLoRA's 4-bit kernels with a paged optimizer,
DeepSpeed ZeRO-3 over NCCL, and the FSDP rows of the support matrix. Run with
`make gpu-check` on a machine with at least one GPU; each test prints one table row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetune.catalog import Strategy, support_matrix
from kubetune.contract import ExitCode

from ..integration.trainer.conftest import FACTS, greedy_answer, launch, memorise_spec, summary_in, training_losses

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

FSDP_ROWS = [r for r in support_matrix() if r.strategy is Strategy.FSDP and r.supported and r.output != "onnx"]
CASES: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    ("qlora-paged", "qlora", {"strategy": "none"}, {"optimizer": "paged-adamw-8bit"}),
    ("qlora-zero3", "qlora", {"strategy": "deepspeed", "deepspeed": {"stage": 3}}, {}),
    ("full-zero3-offload", "full", {"strategy": "deepspeed", "deepspeed": {"stage": 3, "offloadOptimizer": True}}, {}),
    *[(f"{m}-fsdp", m, {"strategy": "fsdp"}, {}) for m in sorted({r.method for r in FSDP_ROWS})],
]


@pytest.mark.parametrize(("name", "method", "distributed", "training"), CASES, ids=[c[0] for c in CASES])
def test_gpu_path_trains_with_the_engine_asked_for(
    name: str, method: str, distributed: dict[str, Any], training: dict[str, Any], volumes: Path, tmp_path: Path
) -> None:
    spec = memorise_spec(
        method,
        ["merged"] if method == "full" else ["adapter"],
        distributed=distributed,
        training={"optimizer": "adamw-fused", **training},
        resources={"accelerators": torch.cuda.device_count()},
    )
    process = launch(spec, volumes, tmp_path, processes=max(1, torch.cuda.device_count()), torchrun=True)

    assert process.wait(timeout=600) == ExitCode.OK, (tmp_path / "log.txt").read_text()[-4000:]
    summary = summary_in(tmp_path / "out")
    losses = training_losses(summary)
    assert summary.engine is not None and summary.metrics is not None
    print(
        f"| {name} | {summary.engine.engine} | {losses[0]:.3f} -> {losses[-1]:.3f} "
        f"| {summary.metrics.tokens_per_second} tok/s |"
    )
    assert losses[-1] < losses[0] / 10
    if distributed["strategy"] == "fsdp":
        assert summary.engine.fsdp_modules
    if method != "full":
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        base = AutoModelForCausalLM.from_pretrained(volumes / "models" / "tiny-phi3")
        model = PeftModel.from_pretrained(base, tmp_path / "out" / "adapter")
        tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out" / "adapter")
        assert greedy_answer(model, tokenizer, FACTS[2][0]) == FACTS[2][1]
