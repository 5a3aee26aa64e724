"""The benchmark's realistic shapes are the models they are named after, and the CPU
configuration runs them after the 30M model. No test asserts a time."""

from __future__ import annotations

import pytest
import torch
from bench.trainer import CPU_CONFIGURATION, parse_arguments, sizes
from bench.workload import QWEN25_05B, SIZES, SMOLLM2_135M, ModelShape
from transformers import AutoConfig, AutoModelForCausalLM

from bench import trainer


def _parameters(shape: ModelShape) -> int:
    settings = shape.config(shape.vocab)
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("shape", "low", "high"),
    [(SMOLLM2_135M, 134e6, 136e6), (QWEN25_05B, 625e6, 635e6)],
    ids=["smollm2-135m", "qwen2.5-0.5b"],
)
def test_the_realistic_shapes_have_their_models_parameter_counts(shape: ModelShape, low: float, high: float) -> None:
    """SmolLM2-135M ties its head to the embedding; the Qwen2.5-0.5B shape has its own head
    (494M tied, plus 136M)."""
    assert low < _parameters(shape) < high


def test_the_realistic_shapes_compute_the_head_over_their_whole_vocabulary() -> None:
    for shape in (SMOLLM2_135M, QWEN25_05B):
        assert shape.linear_shapes()[-1] == (shape.hidden, shape.vocab, 1)
        assert shape.tokenizer_vocab < shape.vocab  # kubetune's small tokenizer, the full head


def test_the_cpu_configuration_runs_the_30m_model_then_the_realistic_shapes() -> None:
    assert [w.size for w in sizes(parse_arguments([]))] == list(CPU_CONFIGURATION)
    assert CPU_CONFIGURATION == ("cpu", "smollm2-135m", "qwen2.5-0.5b")
    assert [w.size for w in sizes(parse_arguments(["--size", "smoke"]))] == ["smoke"]
    for name in CPU_CONFIGURATION[1:]:
        assert [s.name for s in SIZES[name].settings] == ["lora-bf16", "lora-fp32"]
    with pytest.raises(SystemExit, match="unknown size"):
        sizes(parse_arguments(["--size", "cpu,huge"]))


def test_where_bf16_is_emulated_the_default_run_skips_it_and_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    benched: list[list[str]] = []
    monkeypatch.setattr(trainer, "native_bf16", lambda: False)
    monkeypatch.setattr(trainer, "bench_size", lambda w, settings, c, a: benched.append([s.name for s in settings]))

    trainer.main(["--size", "smollm2-135m"])
    trainer.main(["--size", "smollm2-135m", "--settings", "lora-bf16"])  # asked by name: run

    assert benched == [["lora-fp32"], ["lora-bf16"]]
    assert "smollm2-135m lora-bf16: skipped, this CPU has no native bf16" in capsys.readouterr().out
