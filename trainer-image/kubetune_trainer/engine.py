"""Facts about the training engine that actually ran: its type, the ZeRO stage, and how
much of the model this rank holds. Recorded by every rank, so a test (or a person) can
tell real sharding from a silent fallback to plain data parallelism."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from kubetune.api import StrategyType
from kubetune.contract import EngineFacts
from kubetune_trainer.errors import TrainerError


def full_elements(parameter: Any) -> int:
    """Elements of a parameter as the model defines it (ZeRO-3 keeps only a placeholder)."""
    return int(getattr(parameter, "ds_numel", parameter.numel()))


def local_elements(parameter: Any) -> int:
    """Elements of a parameter that live on this rank."""
    if hasattr(parameter, "ds_tensor"):
        return int(parameter.ds_tensor.numel())
    to_local = getattr(parameter, "to_local", None)  # an FSDP2 DTensor
    return int(to_local().numel()) if to_local is not None else int(parameter.numel())


def engine_facts(trainer: Any, total_elements: int) -> EngineFacts:
    wrapped = trainer.model_wrapped
    fsdp = [m for m in wrapped.modules() if type(m).__name__.startswith("FSDP")]
    return EngineFacts(
        engine=type(wrapped).__name__,
        world_size=torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
        parameter_elements=total_elements,
        local_parameter_elements=sum(local_elements(p) for p in trainer.model.parameters()),
        zero_stage=int(wrapped.zero_optimization_stage()) if hasattr(wrapped, "zero_optimization_stage") else None,
        fsdp_modules=len(fsdp) if fsdp else None,
    )


def record(facts: EngineFacts, folder: Path, rank: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank-{rank}.json").write_text(json.dumps(facts.as_json()) + "\n")


class EngineCheck(TrainerCallback):
    """Stops a run whose engine is not the one asked for, before the first step: some
    accelerate and Trainer settings fall back to plain DDP without a word."""

    def __init__(self, trainer: Any, strategy: StrategyType) -> None:
        self.trainer = trainer
        self.strategy = strategy

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        wrapped = self.trainer.model_wrapped
        names = {type(m).__name__ for m in wrapped.modules()} | {type(wrapped).__name__}
        if self.strategy is StrategyType.DEEPSPEED:
            engaged = "DeepSpeedEngine" in names
        elif self.strategy is StrategyType.FSDP:
            engaged = any(name.startswith("FSDP") or name == "FullyShardedDataParallel" for name in names)
        else:
            return
        if not engaged:
            raise TrainerError(f"asked for {self.strategy} but the engine is {type(wrapped).__name__}")
