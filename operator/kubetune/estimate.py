"""Accelerator memory a FineTuneJob needs per device, part by part, by the standard
accounting, with every assumption stated. Pure: the operator's auto-sizing and
`kubetune estimate` call the same function.

Mixed-precision Adam keeps 16 bytes per trainable parameter: 2 for the 16-bit weight,
2 for its gradient and 12 for the fp32 master copy and the two moments. ZeRO stage 1
shards the 12 optimizer bytes over the devices, stage 2 the gradients as well, stage 3
the weights too (frozen base weights included); offload moves the optimizer states (and
with parameter offload, the sharded weights) to CPU memory. A 4-bit base takes half a
byte per linear-layer parameter plus its quantisation constants.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubetune.api import MethodType, StrategyType
from kubetune.api.enums import QuantType
from kubetune.api.spec import DeepSpeedSpec, FineTuneJobSpec
from kubetune.catalog import Preset, Shape

GIB = 1024**3
OPTIMIZER_BYTES = 12
WEIGHT_BYTES = 2
GRADIENT_BYTES = 2
FRAMEWORK_OVERHEAD = 1.5 * GIB
"""CUDA context, allocator fragmentation and kernels' workspaces."""
ACTIVATION_BYTES_PER_TOKEN_LAYER = 34
"""Per token, per layer, per hidden unit, in 16-bit training with fused attention (no s^2 term)."""
QUANT_BLOCK = 64


@dataclass(frozen=True)
class Estimate:
    parts: dict[str, float]
    """Bytes per device, by part."""
    trainable_parameters: int
    total_parameters: int
    world_size: int
    assumptions: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def fits(self, device_bytes: float) -> bool:
        return self.total <= device_bytes


def lora_parameters(shape: Shape, targets: list[str] | str, rank: int, dora: bool) -> int:
    """Trainable adapter parameters: r x (in + out) per adapted linear layer (DoRA adds one
    magnitude per output feature)."""
    linears = shape.linear_shapes()
    chosen = linears if targets == "all-linear" else {n: s for n, s in linears.items() if n in targets}
    per_layer = sum(rank * (a + b) + (b if dora else 0) for a, b in chosen.values())
    return shape.layers * per_layer


def zero_stage(spec: FineTuneJobSpec) -> int:
    if spec.distributed.strategy is StrategyType.DEEPSPEED:
        return (spec.distributed.deepspeed or DeepSpeedSpec()).stage
    if spec.distributed.strategy is StrategyType.FSDP:
        return 3  # full-shard shards what ZeRO-3 shards
    return 0


@dataclass(frozen=True)
class ModelFacts:
    """What the estimate needs of a model: its shape, parameter count and default targets."""

    shape: Shape
    parameters: int
    target_modules: tuple[str, ...] = ()

    @classmethod
    def of_preset(cls, preset: Preset) -> ModelFacts:
        return cls(preset.shape, preset.parameters, preset.target_modules)

    @classmethod
    def of_config(cls, config: dict[str, Any]) -> ModelFacts:
        """From a transformers config.json (Llama, Mistral, Qwen2, Phi-3 and alike)."""
        fused = "phi3" if config.get("model_type") == "phi3" else "none"
        shape = Shape(
            hidden=config["hidden_size"],
            intermediate=config["intermediate_size"],
            layers=config["num_hidden_layers"],
            heads=config["num_attention_heads"],
            kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
            vocab=config["vocab_size"],
            fused=fused,
        )
        embeddings = shape.vocab * shape.hidden * (1 if config.get("tie_word_embeddings") else 2)
        norms = shape.hidden * (2 * shape.layers + 1)
        return cls(shape, shape.linear_parameters + embeddings + norms)


def estimate(spec: FineTuneJobSpec, model: ModelFacts, world_size: int) -> Estimate:
    shape = model.shape
    total = model.parameters
    method = spec.method
    stage = zero_stage(spec)
    deepspeed = spec.distributed.deepspeed or DeepSpeedSpec()
    offload_optimizer = spec.distributed.strategy is StrategyType.DEEPSPEED and deepspeed.offload_optimizer
    offload_params = spec.distributed.strategy is StrategyType.DEEPSPEED and deepspeed.offload_parameters
    assumptions = [
        f"{world_size} device(s); mixed-precision Adam at {WEIGHT_BYTES + GRADIENT_BYTES + OPTIMIZER_BYTES} bytes "
        "per trainable parameter before sharding",
        f"ZeRO stage {stage}"
        + (" (FSDP full-shard counted as stage 3)" if spec.distributed.strategy is StrategyType.FSDP else ""),
        f"activations: {ACTIVATION_BYTES_PER_TOKEN_LAYER} bytes x hidden per token per layer "
        "(fused attention), one layer at a time with gradient checkpointing; fp32 logits",
        f"{FRAMEWORK_OVERHEAD / GIB:.1f} GiB framework overhead per device",
    ]

    def shard(nbytes: float, from_stage: int) -> float:
        return nbytes / world_size if stage >= from_stage else nbytes

    if method.type is MethodType.FULL:
        trainable = total
        base = shard(total * WEIGHT_BYTES, 3)
    else:
        trainable = lora_parameters(shape, _targets(spec, model), method.adapter.r, method.type is MethodType.DORA)
        quant = method.quantized
        if quant is None:
            base = shard(total * WEIGHT_BYTES, 3)
        else:
            linear = shape.linear_parameters
            constants = _quant_constant_bytes(quant.double_quant)
            base = shard(linear * (0.5 + constants) + (total - linear) * WEIGHT_BYTES, 3)
            assumptions.append(
                f"4-bit {quant.type.value if quant.type is QuantType.NF4 else 'fp4'} base: 0.5 + "
                f"{constants:.4f} bytes per linear parameter, the rest in 16 bits"
            )
        base += shard(trainable * WEIGHT_BYTES, 3)
    if offload_params:
        base = 0.0
        assumptions.append("parameters offloaded to CPU memory")
    gradients = shard(trainable * GRADIENT_BYTES, 2)
    optimizer = 0.0 if offload_optimizer else shard(trainable * OPTIMIZER_BYTES, 1)
    if offload_optimizer:
        assumptions.append("optimizer states offloaded to CPU memory")
    parts = {
        "weights": base,
        "gradients": gradients,
        "optimizer": optimizer,
        "activations": _activations(spec, shape),
        "overhead": FRAMEWORK_OVERHEAD,
    }
    return Estimate(parts, trainable, total, world_size, assumptions)


def _targets(spec: FineTuneJobSpec, model: ModelFacts) -> list[str] | str:
    targets = spec.method.adapter.target_modules
    if targets == ["all-linear"]:
        return "all-linear"
    if targets:
        return list(targets)
    return list(model.target_modules) or "all-linear"


def _quant_constant_bytes(double_quant: bool) -> float:
    """One fp32 scale per block of 64 weights; double quantisation stores them in 8 bits with
    one fp32 scale per 256 of them."""
    if double_quant:
        return 1 / QUANT_BLOCK + 4 / (QUANT_BLOCK * 256)
    return 4 / QUANT_BLOCK


def _activations(spec: FineTuneJobSpec, shape: Shape) -> float:
    tokens = spec.training.per_device_batch_size * spec.dataset.max_seq_length
    per_layer = tokens * shape.hidden * ACTIVATION_BYTES_PER_TOKEN_LAYER
    if spec.training.gradient_checkpointing:
        kept = tokens * shape.hidden * WEIGHT_BYTES * shape.layers + per_layer
    else:
        kept = per_layer * shape.layers
    logits = tokens * shape.vocab * 4
    return float(kept + logits)
