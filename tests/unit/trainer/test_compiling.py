"""When the trainer compiles its layers, and that a compiled model trains as the eager one does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune.api import Precision
from kubetune.api.spec import LoraSpec
from kubetune_trainer.compiling import PAYBACK_TOKENS, compiled_layers, planned_tokens, repeated_layers, wants_compile
from kubetune_trainer.runtime import Runtime

from .conftest import memorise_spec, runtime_in

LONG = {"maxSteps": 100_000}


def test_steps_plan_the_tokens_of_every_micro_batch() -> None:
    spec = memorise_spec("lora", ["adapter"], training={"maxSteps": 100, "gradientAccumulationSteps": 2})

    assert planned_tokens(spec, train_examples=8, mean_length=50.0, world_size=4) == 100 * 4 * 2 * 50


def test_epochs_plan_each_process_its_share() -> None:
    spec = memorise_spec("lora", ["adapter"], training={"maxSteps": None, "epochs": 3})

    assert planned_tokens(spec, train_examples=1000, mean_length=20.0, world_size=2) == 3 * 1000 * 20 // 2


def test_auto_compiles_a_long_run_only() -> None:
    spec = memorise_spec("lora", ["adapter"])

    assert not wants_compile(spec, PAYBACK_TOKENS - 1, "cpu")
    assert wants_compile(spec, PAYBACK_TOKENS, "cpu")
    assert not wants_compile(spec, 100 * PAYBACK_TOKENS, "cuda"), "not measured on a GPU yet"


def test_the_test_suites_runs_do_not_compile() -> None:
    spec = memorise_spec("full", ["merged"])

    assert not wants_compile(spec, planned_tokens(spec, train_examples=8, mean_length=128.0, world_size=1), "cpu")


@pytest.mark.parametrize(
    ("method", "changes"),
    [
        ("qlora", {}),
        ("lora", {"training": LONG | {"gradientCheckpointing": True}}),
        ("lora", {"distributed": {"strategy": "deepspeed", "deepspeed": {"stage": 2}}}),
        ("full", {"distributed": {"strategy": "deepspeed", "deepspeed": {"stage": 3}}}),
        ("full", {"distributed": {"strategy": "fsdp"}, "resources": {"accelerators": 2}}),
    ],
    ids=["qlora", "checkpointing", "zero2", "zero3", "fsdp"],
)
def test_auto_leaves_untested_setups_uncompiled(method: str, changes: dict[str, Any]) -> None:
    spec = memorise_spec(method, ["adapter"] if method != "full" else ["merged"], **changes)

    assert not wants_compile(spec, 100 * PAYBACK_TOKENS, "cpu")


def test_always_and_never_override_the_plan() -> None:
    always = memorise_spec("qlora", ["adapter"], training={"compile": "always"})
    never = memorise_spec("lora", ["adapter"], training={"compile": "never"})

    assert wants_compile(always, 0, "cpu")
    assert not wants_compile(never, 100 * PAYBACK_TOKENS, "cpu")


def _model(method: str, volumes: Path, runtime: Runtime) -> Any:
    from kubetune_trainer.model import apply_method, load_model, resolve_source

    spec = memorise_spec(method, ["adapter"] if method != "full" else ["merged"])
    source = resolve_source(spec, runtime)
    torch.manual_seed(0)
    model = apply_method(load_model(spec, source, Precision.FP32, runtime), spec, source)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):  # random masks differ between eager and compiled passes
            module.p = 0.0
    return model


def test_the_repeated_layers_are_the_decoder_layers_under_the_adapter(volumes: Path, runtime: Runtime) -> None:
    model = _model("lora", volumes, runtime)

    layers = repeated_layers(model)

    assert len(layers) == model.config.num_hidden_layers
    assert {type(layer).__name__ for layer in layers} == {"Phi3DecoderLayer"}


def _loss_and_gradients(model: Any, batch: dict[str, torch.Tensor]) -> tuple[float, torch.Tensor]:
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    gradients = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    return loss.item(), gradients


@pytest.mark.slow
def test_compiled_layers_train_as_eager_ones_across_lengths(volumes: Path, runtime: Runtime) -> None:
    model = _model("lora", volumes, runtime)
    model.train()
    batches = []
    for rows, width in ((2, 24), (3, 40)):  # padding-free batches change shape every step
        ids = torch.randint(3, 200, (rows, width))
        positions = torch.arange(width).repeat(rows, 1) % (width // 2)  # two examples per row
        batches.append({"input_ids": ids, "labels": ids, "position_ids": positions})

    eager = [_loss_and_gradients(model, batch) for batch in batches]
    with compiled_layers(model, wanted=True) as count:
        compiled = [_loss_and_gradients(model, batch) for batch in batches]

    assert count == model.config.num_hidden_layers
    assert all(layer._compiled_call_impl is None for layer in repeated_layers(model))
    for (eager_loss, eager_grads), (compiled_loss, compiled_grads) in zip(eager, compiled, strict=True):
        assert compiled_loss == pytest.approx(eager_loss, rel=1e-4)
        assert (compiled_grads - eager_grads).norm() <= 1e-3 * eager_grads.norm()


@pytest.mark.slow
def test_a_run_with_compile_always_trains_as_an_uncompiled_one(volumes: Path, tmp_path: Path) -> None:
    from kubetune.contract import ExitCode
    from kubetune_trainer.main import run

    summaries = {}
    for choice in ("always", "never"):
        runtime = runtime_in(volumes, tmp_path / choice)
        # fp32 and no dropout (whose masks are random): the two runs start equal.
        training = {"maxSteps": 12, "loggingInterval": 4, "precision": "fp32", "compile": choice}
        spec = memorise_spec("lora", ["adapter"], training=training)
        spec = spec.model_copy(update={"method": spec.method.model_copy(update={"lora": LoraSpec(dropout=0.0)})})
        code, summaries[choice] = run(spec, runtime)
        assert code is ExitCode.OK, summaries[choice]

    losses = {
        choice: [h["loss"] for h in summary.history or [] if "loss" in h] for choice, summary in summaries.items()
    }
    assert summaries["always"].metrics["compiledLayers"] == 2
    assert summaries["never"].metrics["compiledLayers"] == 0
    assert losses["always"][-1] < losses["always"][0] / 2
    # The first loss comes before any update; after it, Adam turns rounding-sized differences
    # of near-zero gradients into whole steps, and a tiny model memorising at a high learning
    # rate follows them (1-2% apart after 12 steps).
    assert losses["always"][0] == pytest.approx(losses["never"][0], rel=1e-5)
    assert losses["always"][-1] == pytest.approx(losses["never"][-1], rel=0.05)
