"""When the trainer compiles its layers, and that a compiled model trains as the eager one does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune.api import Precision
from kubetune_trainer.compiling import PAYBACK_TOKENS, planned_tokens, repeated_layers, wants_compile
from kubetune_trainer.runtime import Runtime

from .conftest import memorise_spec

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
