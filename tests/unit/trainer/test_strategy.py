from __future__ import annotations

import enum
from typing import Any

import pytest

from kubetune.api import Precision
from kubetune.api.spec import DeepSpeedSpec, FsdpSpec
from kubetune_trainer.arguments import training_arguments
from kubetune_trainer.strategy import deepspeed_config, fsdp_settings, leave_the_process_group, trains_alone

from .conftest import memorise_spec


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_config_follows_the_stage(stage: int) -> None:
    config = deepspeed_config(DeepSpeedSpec(stage=stage), on_cpu=False)

    assert config["zero_optimization"]["stage"] == stage
    assert config["train_micro_batch_size_per_gpu"] == "auto"
    assert ("stage3_gather_16bit_weights_on_model_save" in config["zero_optimization"]) == (stage == 3)
    assert "zero_force_ds_cpu_optimizer" not in config


def test_offload_settings_map_to_cpu_devices() -> None:
    config = deepspeed_config(DeepSpeedSpec(stage=3, offload_optimizer=True, offload_parameters=True), on_cpu=False)

    assert config["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert config["zero_optimization"]["offload_param"] == {"device": "cpu", "pin_memory": True}


def test_cpu_jobs_use_torch_adamw_inside_deepspeed() -> None:
    assert deepspeed_config(DeepSpeedSpec(), on_cpu=True)["zero_force_ds_cpu_optimizer"] is False


def test_fsdp_settings() -> None:
    settings = fsdp_settings(FsdpSpec(cpu_offload=True))

    assert settings["fsdp"] == "full_shard auto_wrap offload"
    assert settings["fsdp_config"]["use_orig_params"] is True


@pytest.mark.parametrize(
    ("method", "training", "expected"),
    [
        ("lora", {}, {"learning_rate": 2e-4, "warmup_steps": 0.03, "optim": "adamw_torch_fused"}),
        ("full", {}, {"learning_rate": 2e-5}),
        (
            "lora",
            {"warmupSteps": 7, "optimizer": "adamw-8bit", "scheduler": "constant"},
            {"warmup_steps": 7, "optim": "adamw_bnb_8bit", "lr_scheduler_type": "constant"},
        ),
        ("lora", {"evalInterval": 5}, {"eval_strategy": "steps", "eval_steps": 5}),
    ],
)
def test_training_arguments_translate_the_spec(
    method: str, training: dict[str, Any], expected: dict[str, Any], tmp_path: Any
) -> None:
    body = {"learningRate": None, "optimizer": "adamw-fused", **training}
    spec = memorise_spec(method, ["merged"] if method == "full" else ["adapter"], training=body)

    args = training_arguments(spec, Precision.BF16, on_cpu=True, world_size=1, checkpoint_dir=tmp_path, has_eval=True)

    for key, value in expected.items():
        actual = getattr(args, key)
        assert (actual.value if isinstance(actual, enum.Enum) else actual) == value, key
    assert args.bf16 is True and args.ddp_backend is None


TORCHRUN_ONE_PROCESS = {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "HOME": "/root"}


@pytest.mark.parametrize("strategy", ["auto", "none", "ddp"])
def test_one_process_leaves_torchruns_group_and_trains_the_plain_model(strategy: str) -> None:
    spec = memorise_spec("full", ["merged"], distributed={"strategy": strategy})
    env = dict(TORCHRUN_ONE_PROCESS)

    assert trains_alone(spec, world_size=1)
    leave_the_process_group(env)

    assert env == {"HOME": "/root"}


@pytest.mark.parametrize(
    ("distributed", "world_size"),
    [
        ({"strategy": "ddp"}, 2),
        ({"strategy": "auto"}, 2),
        ({"strategy": "deepspeed", "deepspeed": {"stage": 3, "offloadOptimizer": True}}, 1),
        ({"strategy": "fsdp"}, 1),
    ],
)
def test_several_processes_or_a_sharding_engine_keep_the_process_group(
    distributed: dict[str, object], world_size: int
) -> None:
    spec = memorise_spec("full", ["merged"], distributed=distributed, resources={"accelerators": world_size})

    assert not trains_alone(spec, world_size)
