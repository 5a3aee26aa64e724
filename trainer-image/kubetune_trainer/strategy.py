"""How processes share the work, as TrainingArguments settings: a DeepSpeed config
generated from the spec, or FSDP settings, or nothing for DDP and one process.

Pure functions of the spec and the hardware; the DeepSpeed config is also written beside
the checkpoints, so a person can see exactly what ran.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from kubetune.api import StrategyType
from kubetune.api.enums import FsdpSharding
from kubetune.api.spec import DeepSpeedSpec, FineTuneJobSpec, FsdpSpec

FSDP_SHARDING = {
    FsdpSharding.FULL_SHARD: "full_shard",
    FsdpSharding.SHARD_GRAD_OP: "shard_grad_op",
    FsdpSharding.HYBRID_SHARD: "hybrid_shard",
    FsdpSharding.NO_SHARD: "no_shard",
}


def deepspeed_config(settings: DeepSpeedSpec, on_cpu: bool) -> dict[str, Any]:
    """A ZeRO config; "auto" values are filled by transformers from the training arguments."""
    zero: dict[str, Any] = {
        "stage": settings.stage,
        "overlap_comm": not on_cpu,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if settings.stage == 3:
        zero |= {
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            # Saving gathers the shards into whole 16-bit weights, so outputs load anywhere.
            "stage3_gather_16bit_weights_on_model_save": True,
        }
    if settings.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": not on_cpu}
    if settings.offload_parameters:
        zero["offload_param"] = {"device": "cpu", "pin_memory": not on_cpu}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }
    if on_cpu:
        # DeepSpeed's CPU Adam is a compiled op; without accelerators the optimizer already
        # lives in CPU memory, so torch's own AdamW serves and nothing is compiled.
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def fsdp_settings(settings: FsdpSpec) -> dict[str, Any]:
    """FSDP over each decoder layer (accelerate wraps the model's own no-split modules)."""
    options = [FSDP_SHARDING[settings.sharding], "auto_wrap"]
    if settings.cpu_offload:
        options.append("offload")
    return {
        "fsdp": " ".join(options),
        "fsdp_config": {
            "use_orig_params": True,
            "sync_module_states": True,
            "cpu_ram_efficient_loading": False,
        },
    }


def strategy_arguments(spec: FineTuneJobSpec, on_cpu: bool) -> dict[str, Any]:
    """TrainingArguments keywords for the strategy in force (none for DDP or one process)."""
    distributed = spec.distributed
    match distributed.strategy:
        case StrategyType.DEEPSPEED:
            return {"deepspeed": deepspeed_config(distributed.deepspeed or DeepSpeedSpec(), on_cpu)}
        case StrategyType.FSDP:
            return fsdp_settings(distributed.fsdp or FsdpSpec())
        case StrategyType.AUTO | StrategyType.NONE | StrategyType.DDP:
            return {}
    raise AssertionError(f"unhandled strategy {distributed.strategy}")


SHM_COMM_OP = "deepspeed_shm_comm"


def skip_inference_comm_op() -> None:
    """Keep DeepSpeed from compiling its shared-memory all-reduce op when its process group
    starts on a CPU: about 35 s of g++ on 2 idle cores and minutes under load, in every new pod
    (the build lands in the home folder) and again whenever the install path changes. Only
    DeepSpeed-Inference's tensor-parallel all-reduce calls the op; training reduces through the
    process group (gloo), so DeepSpeed is told the op cannot be built. Call before the
    training arguments start DeepSpeed."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[SHM_COMM_OP] = False


def shards_weights(args: Any) -> bool:
    """Whether the training arguments run ZeRO-3, where each rank holds only its shard of
    every weight (from loading on: transformers places each rank's shard in from_pretrained)."""
    config = getattr(args, "hf_deepspeed_config", None) if args.deepspeed else None
    return config is not None and config.config.get("zero_optimization", {}).get("stage") == 3


PROCESS_GROUP_VARIABLES = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK")
"""What torchrun tells each process about its group. accelerate and transformers start a
process group, and wrap the model in DistributedDataParallel, whenever LOCAL_RANK is set."""


def trains_alone(spec: FineTuneJobSpec, world_size: int) -> bool:
    """Whether this process trains the plain model: it is the only one, and no engine that
    needs a process group of its own (DeepSpeed, FSDP: ZeRO offload on one device) was asked for."""
    return world_size == 1 and spec.distributed.strategy not in (StrategyType.DEEPSPEED, StrategyType.FSDP)


def leave_the_process_group(env: MutableMapping[str, str]) -> None:
    """Forget torchrun's group variables, so that a process training alone (a one-process pod
    goes through torchrun too) gets no one-member process group and no DDP wrapper, whose
    gradient buckets would hold a second copy of every trainable gradient."""
    for name in PROCESS_GROUP_VARIABLES:
        env.pop(name, None)
