"""Accelerator memory a FineTuneJob needs per device, part by part, by the standard
accounting, with every assumption stated. Pure: the operator's auto-sizing and
`kubetune estimate` call the same function.

Mixed-precision Adam keeps 16 bytes per trainable parameter: 2 for the 16-bit weight,
2 for its gradient and 12 for the fp32 master copy and the two moments. ZeRO stage 1
shards the 12 optimizer bytes over the devices, stage 2 the gradients as well, stage 3
the weights too (frozen base weights included); offload moves the optimizer states (and
with parameter offload, the sharded weights) to CPU memory. A 4-bit base takes half a
byte per linear-layer parameter plus its quantisation constants.

A preference objective (dpo, orpo) runs two sequences per pair, the chosen and the rejected
answer, so a batch keeps twice the activations; dpo also scores every batch with a frozen
reference model: none more with an adapter method (the base with its adapter switched off),
a copy of the base with full fine-tuning (its linear layers in 16 bits; under ZeRO-3 the base
loaded again), or the named reference model (counted at the base's size and quantisation);
ZeRO-3 shards it over the ranks like the model.

The task decides the head: a language model's head writes a score per vocabulary entry for
every token; a classifier replaces it with a new, small head (hidden x labels) that trains
in full beside the adapter (peft keeps a frozen copy of the original as well) and writes a
score per label, for every text or every token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubetune.api import MethodType, StrategyType, TaskType
from kubetune.api.enums import QuantType
from kubetune.api.facts import Linear, ModelFacts, decoder_linears
from kubetune.api.spec import DeepSpeedSpec, FineTuneJobSpec
from kubetune.catalog import Shape

GIB = 1024**3
OPTIMIZER_BYTES = 12
WEIGHT_BYTES = 2
# Full fine-tuning's fp32 master weights, where a copy of them keeps that dtype (dpo's reference).
MASTER_WEIGHT_BYTES = 4
GRADIENT_BYTES = 2
FRAMEWORK_OVERHEAD = 1.5 * GIB
"""CUDA context, allocator fragmentation and kernels' workspaces."""
# Activations: bytes that autograd keeps for the backward pass, per token per block, in 16-bit
# training with fused attention (no s^2 term). Counted, not assumed: tests/unit/trainer/
# test_activation_bytes.py counts the tensors autograd saves in Llama and Phi-3 blocks under
# autocast and holds these within 15%; a Phi-3-mini LoRA run on an H200 peaked where they say.
TRAINED_BLOCK_BYTES = (34, 8)
"""(x hidden, x intermediate) when every weight trains (each layer keeps its input)."""
FROZEN_BLOCK_BYTES = (20, 8)
"""(x hidden, x intermediate) over a frozen base with adapters and no adapter dropout."""
FUSED_QKV_BYTES = 6
"""x hidden more over a frozen base whose query, key and value come from one projection (Phi-3)."""
ADAPTER_DROPOUT_BYTES = 3
"""Per input feature of each adapted layer when the adapter's dropout is on: the dropped
16-bit copy its A matrix keeps, and the mask."""
DORA_BYTES = 4
"""Per output feature of each adapted layer: what DoRA's rescaling of the base output keeps."""
QUANT_BLOCK = 64
ASSUMED_LABELS = {TaskType.SEQUENCE_CLASSIFICATION: 2, TaskType.TOKEN_CLASSIFICATION: 9}
"""Labels counted when dataset.labels does not name them: a binary classifier; CoNLL-2003's
nine BIO tags."""


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
    """Trainable adapter parameters of a decoder: r x (in + out) per adapted linear layer (DoRA
    adds one magnitude per output feature)."""
    return adapter_parameters(decoder_linears(shape), targets, rank, dora)


def adapter_parameters(linears: tuple[Linear, ...], targets: list[str] | str, rank: int, dora: bool) -> int:
    chosen = [layer for layer in linears if targets == "all-linear" or layer.name in targets]
    return sum(
        layer.count * (rank * (layer.inputs + layer.outputs) + (layer.outputs if dora else 0)) for layer in chosen
    )


def zero_stage(spec: FineTuneJobSpec) -> int:
    if spec.distributed.strategy is StrategyType.DEEPSPEED:
        return (spec.distributed.deepspeed or DeepSpeedSpec()).stage
    if spec.distributed.strategy is StrategyType.FSDP:
        return 3  # full-shard shards what ZeRO-3 shards
    return 0


class UnreadableConfig(ValueError):
    """A config.json that does not say what the estimate needs."""


def read_model_facts(config: dict[str, Any]) -> ModelFacts:
    """From a transformers config.json: decoders (Llama, Mistral, Qwen2, Phi-3 and alike),
    mixtures of experts (Mixtral, Qwen-MoE, Phi-3.5-MoE), BERT-like encoders and T5 or BART
    encoder-decoders. Raises UnreadableConfig naming the first field it lacks."""
    try:
        return _read(config)
    except KeyError as error:
        raise UnreadableConfig(
            f"config.json has no {error.args[0]} (model_type {config.get('model_type', 'unset')}), "
            "which sizing the model needs"
        ) from None
    except (TypeError, ValueError) as error:
        raise UnreadableConfig(f"config.json has a field of the wrong kind: {error}") from None


def _read(config: dict[str, Any]) -> ModelFacts:
    model_type = config.get("model_type")
    if model_type in ENCODERS:
        return _encoder(config)
    if model_type in ("t5", "mt5", "umt5"):
        return _t5(config)
    if model_type in ("bart", "mbart", "marian"):
        return _bart(config)
    if any(key in config for key in EXPERT_COUNTS):
        return _mixture_of_experts(config)
    fused = "phi3" if model_type == "phi3" else "none"
    shape = Shape(
        hidden=int(config["hidden_size"]),
        intermediate=int(config["intermediate_size"]),
        layers=int(config["num_hidden_layers"]),
        heads=int(config["num_attention_heads"]),
        kv_heads=int(config.get("num_key_value_heads") or config["num_attention_heads"]),
        vocab=int(config["vocab_size"]),
        fused=fused,
    )
    tied = bool(config.get("tie_word_embeddings"))
    embeddings = shape.vocab * shape.hidden * (1 if tied else 2)
    norms = shape.hidden * (2 * shape.layers + 1)
    return ModelFacts(shape=shape, parameters=shape.linear_parameters + embeddings + norms, lm_head=0 if tied else None)


EXPERT_COUNTS = ("num_local_experts", "num_experts", "n_routed_experts")
"""Where configs say how many experts a layer has: Mixtral and Phi-3.5-MoE, Qwen-MoE, DeepSeek."""
QKV_BIASED = ("qwen2_moe",)
# What peft's all-linear adapts in a mixture of experts besides the attention and shared linear
# layers (held by tests/unit/test_estimate.py against peft itself): the router where it is
# linear-like, and Mixtral's fused expert weights.
ROUTER_ADAPTED = ("mixtral", "phimoe")
EXPERTS_ADAPTED = ("mixtral",)


def _mixture_of_experts(config: dict[str, Any]) -> ModelFacts:
    """A decoder whose feed-forward layers are mixtures of experts. Every expert's weights are
    held in memory; a token passes through the experts it is routed to (and a shared expert,
    where there is one), so activations follow those (a dense layer among them is counted
    as wide). The experts live in fused 3-D tensors (transformers 5), not linear layers:
    4-bit quantisation leaves them in 16 bits."""
    h, layers, model_type = int(config["hidden_size"]), int(config["num_hidden_layers"]), config.get("model_type")
    experts = int(next(config[key] for key in EXPERT_COUNTS if config.get(key)))
    active = int(config["num_experts_per_tok"])
    width = int(config.get("moe_intermediate_size") or config["intermediate_size"])
    shared = int(config.get("shared_expert_intermediate_size") or 0)
    sparse = _expert_layers(config, layers)
    linears = [*_attention_linears(config), *_shared_and_dense_linears(config, sparse, shared)]
    router = sparse * experts * h
    if model_type in ROUTER_ADAPTED:
        linears.append(Linear(name="gate", inputs=h, outputs=experts, count=sparse))
        router = 0
    expert_adapters: tuple[Linear, ...] = ()
    if model_type in EXPERTS_ADAPTED:  # the fused gate-and-up weights at twice the rank, down at once
        expert_adapters = (
            Linear(name="experts", inputs=h, outputs=2 * width, count=2 * experts * sparse),
            Linear(name="experts", inputs=width, outputs=h, count=experts * sparse),
        )
    vocab, tied = int(config["vocab_size"]), bool(config.get("tie_word_embeddings"))
    norm_weights = 2 if model_type == "phimoe" else 1  # a LayerNorm keeps a bias beside its weight
    rest = (
        sparse * experts * 3 * h * width  # every expert's gate, up and down
        + router
        + vocab * h * (1 if tied else 2)
        + norm_weights * h * (2 * layers + 1)
        + _attention_biases(config)
    )
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    shape = Shape(
        hidden=h, intermediate=active * width + shared, layers=layers, heads=heads, kv_heads=kv_heads, vocab=vocab
    )
    return ModelFacts(
        shape=shape,
        parameters=sum(layer.parameters for layer in linears) + rest,
        linears=tuple(linears),
        lm_head=0 if tied else None,
        expert_adapters=expert_adapters,
        experts=experts,
        active_experts=active,
    )


def _expert_layers(config: dict[str, Any], layers: int) -> int:
    """Layers whose feed-forward is a mixture of experts: all but those in `mlp_only_layers`
    and those off `decoder_sparse_step` (Qwen-MoE)."""
    step = int(config.get("decoder_sparse_step") or 1)
    dense_only = set(config.get("mlp_only_layers") or ())
    return sum(1 for i in range(layers) if i not in dense_only and (i + 1) % step == 0)


def _attention_widths(config: dict[str, Any]) -> tuple[int, int, int]:
    """(hidden, query width, key and value width)."""
    h, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or h // heads)
    return h, heads * head_dim, int(config.get("num_key_value_heads") or heads) * head_dim


def _attention_linears(config: dict[str, Any]) -> list[Linear]:
    h, q, kv = _attention_widths(config)
    layers = int(config["num_hidden_layers"])
    return [
        Linear(name="q_proj", inputs=h, outputs=q, count=layers),
        Linear(name="k_proj", inputs=h, outputs=kv, count=layers),
        Linear(name="v_proj", inputs=h, outputs=kv, count=layers),
        Linear(name="o_proj", inputs=q, outputs=h, count=layers),
    ]


def _attention_biases(config: dict[str, Any]) -> int:
    """Qwen-MoE biases its query, key and value; `attention_bias` adds the output's too."""
    h, q, kv = _attention_widths(config)
    layers = int(config["num_hidden_layers"])
    biases = layers * (q + 2 * kv) if config.get("model_type") in QKV_BIASED or config.get("attention_bias") else 0
    return biases + (layers * h if config.get("attention_bias") else 0)


def _shared_and_dense_linears(config: dict[str, Any], sparse: int, shared: int) -> list[Linear]:
    """The shared expert of each expert layer (and its gate), and the MLP of each dense layer."""
    h, dense = int(config["hidden_size"]), int(config["num_hidden_layers"]) - sparse
    linears = []
    if shared:
        linears += [
            Linear(name="gate_proj", inputs=h, outputs=shared, count=sparse),
            Linear(name="up_proj", inputs=h, outputs=shared, count=sparse),
            Linear(name="down_proj", inputs=shared, outputs=h, count=sparse),
            Linear(name="shared_expert_gate", inputs=h, outputs=1, count=sparse),
        ]
    if dense:
        width = int(config["intermediate_size"])
        linears += [
            Linear(name="gate_proj", inputs=h, outputs=width, count=dense),
            Linear(name="up_proj", inputs=h, outputs=width, count=dense),
            Linear(name="down_proj", inputs=width, outputs=h, count=dense),
        ]
    return linears


ENCODERS = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta", "deberta-v2", "mpnet")


def _encoder(config: dict[str, Any]) -> ModelFacts:
    """A BERT-like encoder: attention (query, key, value, an output dense) and a two-matrix MLP
    per block, a pooler, absolute position and token-type embeddings, no language-model head."""
    h, i = config["hidden_size"], config["intermediate_size"]
    layers = config["num_hidden_layers"]
    shape = Shape(
        hidden=h,
        intermediate=i,
        layers=layers,
        heads=config["num_attention_heads"],
        kv_heads=config["num_attention_heads"],
        vocab=config["vocab_size"],
    )
    linears = (
        Linear(name="query", inputs=h, outputs=h, count=layers),
        Linear(name="key", inputs=h, outputs=h, count=layers),
        Linear(name="value", inputs=h, outputs=h, count=layers),
        Linear(name="dense", inputs=h, outputs=h, count=layers),
        Linear(name="dense", inputs=h, outputs=i, count=layers),
        Linear(name="dense", inputs=i, outputs=h, count=layers),
    )
    pooler = Linear(name="dense", inputs=h, outputs=h, count=1)
    biases = layers * (4 * h + i + h)
    positions = config.get("max_position_embeddings", 512) + config.get("type_vocab_size", 2)
    embeddings = (shape.vocab + positions) * h
    norms = 2 * h * (2 * layers + 1)
    linear = sum(layer.parameters for layer in linears)
    parameters = linear + biases + embeddings + norms + pooler.parameters + h
    return ModelFacts(shape=shape, parameters=parameters, linears=linears, lm_head=0, pooler=pooler)


def _t5(config: dict[str, Any]) -> ModelFacts:
    """T5: q, k, v, o attention without biases (the decoder has a second, cross attention),
    a wi/wo MLP (wi_0 and wi_1 when gated), one shared embedding; its head is tied to the
    embedding in T5 1.0 and apart from it in 1.1 and later."""
    h, inner, ff = config["d_model"], config["num_heads"] * config["d_kv"], config["d_ff"]
    encoder = config["num_layers"]
    decoder = config.get("num_decoder_layers") or encoder
    gated = str(config.get("feed_forward_proj", "relu")).startswith("gated")
    mlp = (("wi_0", h, ff), ("wi_1", h, ff), ("wo", ff, h)) if gated else (("wi", h, ff), ("wo", ff, h))
    attention = [("q", h, inner), ("k", h, inner), ("v", h, inner), ("o", inner, h)]
    linears = tuple(
        Linear(name=name, inputs=a, outputs=b, count=count)
        for name, a, b, count in [
            *[(n, a, b, encoder + 2 * decoder) for n, a, b in attention],
            *[(n, a, b, encoder + decoder) for n, a, b in mlp],
        ]
    )
    # RMS norms: two per encoder block, three per decoder block, one after each stack; and
    # each stack's relative position biases.
    rest = (
        h * (2 * encoder + 3 * decoder + 2) + 2 * config.get("relative_attention_num_buckets", 32) * config["num_heads"]
    )
    return _encoder_decoder(config, h, ff, encoder + decoder, config["num_heads"], linears, rest)


def _bart(config: dict[str, Any]) -> ModelFacts:
    """BART and kin: q/k/v/out projections with biases (the decoder has encoder_attn too) and
    an fc1/fc2 MLP; learned positions; the head tied to the shared embedding."""
    h = config["d_model"]
    encoder, decoder = config["encoder_layers"], config["decoder_layers"]
    ff = config["encoder_ffn_dim"]
    attention = ("q_proj", "k_proj", "v_proj", "out_proj")
    linears = (
        *(Linear(name=name, inputs=h, outputs=h, count=encoder + 2 * decoder) for name in attention),
        Linear(name="fc1", inputs=h, outputs=ff, count=encoder + decoder),
        Linear(name="fc2", inputs=ff, outputs=h, count=encoder + decoder),
    )
    biases = sum(layer.count * layer.outputs for layer in linears)
    positions = 2 * (config.get("max_position_embeddings", 1024) + 2) * h
    # Layer norms (weight and bias): two per encoder block, three per decoder block, one on
    # each stack's embeddings.
    norms = 2 * h * (2 * encoder + 3 * decoder + 2)
    heads = config["encoder_attention_heads"]
    return _encoder_decoder(config, h, ff, encoder + decoder, heads, linears, biases + positions + norms)


def _encoder_decoder(
    config: dict[str, Any], h: int, ff: int, layers: int, heads: int, linears: tuple[Linear, ...], rest: int
) -> ModelFacts:
    """`rest`: the parameters besides the linear layers and the embeddings (norms, biases)."""
    shape = Shape(hidden=h, intermediate=ff, layers=layers, heads=heads, kv_heads=heads, vocab=config["vocab_size"])
    tied = config.get("tie_word_embeddings", True)
    head = 0 if tied else shape.vocab * h
    parameters = sum(layer.parameters for layer in linears) + shape.vocab * h + head + rest
    return ModelFacts(shape=shape, parameters=parameters, linears=linears, lm_head=head)


@dataclass(frozen=True)
class Head:
    """What the task puts on top of the model."""

    parameters: int
    """Parameters of a new head (a classifier), 0 when the model's own head serves."""
    replaces: int
    """Parameters of the model's head that the new one replaces."""
    outputs: int
    """Scores per position: the vocabulary, or the labels."""
    per_token: bool
    """Whether every token gets scores (language models, tagging) or only each text."""


def task_head(spec: FineTuneJobSpec, model: ModelFacts) -> tuple[Head, str | None]:
    """The head of the spec's task on this model, and the assumption behind it, if any."""
    task = spec.task
    if not task.has_labels:
        return Head(0, 0, model.shape.vocab, per_token=True), None
    labels = spec.dataset.labels
    count = len(labels) if labels else ASSUMED_LABELS[task]
    named = "from dataset.labels" if labels else "assumed; name them in dataset.labels"
    head = Head(
        model.shape.hidden * count + count,
        model.lm_head_parameters,
        count,
        per_token=task is TaskType.TOKEN_CLASSIFICATION,
    )
    return head, (
        f"{task} head: {model.shape.hidden} x {count} labels ({named}), trained in full beside the adapter "
        "with a frozen copy kept; it replaces the language-model head"
    )


def estimate(spec: FineTuneJobSpec, model: ModelFacts, world_size: int) -> Estimate:
    head, head_assumption = task_head(spec, model)
    total = model.parameters - model.dropped(spec.task) - head.replaces + head.parameters
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
        f"activations: {activation_bytes_per_token_layer(spec, model):,.0f} bytes per token per layer "
        "(fused attention; autograd's saved tensors, counted), one layer at a time with gradient "
        "checkpointing; fp32 logits",
        f"{FRAMEWORK_OVERHEAD / GIB:.1f} GiB framework overhead per device",
    ]
    if head_assumption:
        assumptions.append(head_assumption)
    if model.experts:
        assumptions.append(
            f"mixture of experts: all {model.experts} experts of each layer held in memory, activations "
            f"through the {model.active_experts} each token is routed to"
        )
    if spec.task is TaskType.SEQ2SEQ:
        assumptions.append("seq2seq: targets as long as sources (maxSeqLength each), through both stacks")

    def shard(nbytes: float, from_stage: int) -> float:
        return nbytes / world_size if stage >= from_stage else nbytes

    if method.type is MethodType.FULL:
        trainable = total
        base = shard(total * WEIGHT_BYTES, 3)
    else:
        adapters = adapter_parameters(
            model.adapted_layers(spec.task, _targets(spec, model)),
            "all-linear",
            method.adapter.r,
            method.type is MethodType.DORA,
        )
        trainable = adapters + head.parameters
        quant = method.quantized
        if quant is None:
            base = shard(total * WEIGHT_BYTES, 3)
        else:
            linear = model.linear_parameters(spec.task)
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
        "activations": _activations(spec, model, head),
        "overhead": FRAMEWORK_OVERHEAD,
    }
    if spec.objective.prefers:
        parts["activations"] *= 2
        assumptions.append(f"{spec.objective}: two sequences per pair (chosen and rejected answer)")
    if spec.objective.uses_reference:
        reference, said = _reference(spec, model, total, sharded=stage >= 3)
        parts["reference"] = shard(reference, 3)
        assumptions.append(said)
    return Estimate(parts, trainable, total, world_size, assumptions)


def _reference(spec: FineTuneJobSpec, model: ModelFacts, total: int, sharded: bool) -> tuple[float, str]:
    """Bytes of dpo's frozen reference model (whole; ZeRO-3 `sharded` divides them over the
    ranks), and how they were counted."""
    named = spec.preferences.reference is not None
    if spec.method.type.uses_adapter and not named:
        return 0.0, "reference: the base with its adapter switched off (no second copy)"
    quant = spec.method.quantized
    what = f"reference {spec.preferences.reference.display}" if spec.preferences.reference else "reference"
    spread = ", sharded like the model" if sharded else ""
    if quant is not None:
        linear = model.linear_parameters(spec.task)
        nbytes = linear * (0.5 + _quant_constant_bytes(quant.double_quant)) + (total - linear) * WEIGHT_BYTES
        return float(nbytes), f"{what}: frozen, of the base's size, 4-bit like it{spread}"
    if named:  # loaded in the compute dtype
        return float(total * WEIGHT_BYTES), f"{what}: frozen, of the base's size, in 16 bits{spread}"
    if sharded:
        return float(total * WEIGHT_BYTES), f"reference: the base loaded again in 16 bits{spread}"
    if spec.distributed.strategy is StrategyType.DEEPSPEED:  # ZeRO-1 or 2 hold the policy in 16 bits
        return float(total * WEIGHT_BYTES), "reference: a frozen 16-bit copy of the base, taken before training"
    # A copy of fp32 master weights whose linear layers alone the trainer casts, so that it
    # computes as the policy does under autocast.
    linear = model.linear_parameters(spec.task)
    nbytes = linear * WEIGHT_BYTES + (total - linear) * MASTER_WEIGHT_BYTES
    return float(nbytes), "reference: a frozen copy of the base taken before training, its linear layers in 16 bits"


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


def activation_bytes_per_token_layer(spec: FineTuneJobSpec, model: ModelFacts) -> float:
    """What one block keeps for the backward pass, per token: the block's own tensors, and
    for adapters whatever their dropout and DoRA's rescaling add per adapted layer."""
    shape = model.shape
    if spec.method.type is MethodType.FULL:
        per_hidden, per_intermediate = TRAINED_BLOCK_BYTES
        return float(per_hidden * shape.hidden + per_intermediate * shape.intermediate)
    per_hidden, per_intermediate = FROZEN_BLOCK_BYTES
    block = per_hidden * shape.hidden + per_intermediate * shape.intermediate
    if shape.fused != "none":
        block += FUSED_QKV_BYTES * shape.hidden
    adapter = spec.method.adapter
    targets = _targets(spec, model)
    adapted = [layer for layer in model.linear_layers(spec.task) if targets == "all-linear" or layer.name in targets]
    dropout = ADAPTER_DROPOUT_BYTES if adapter.dropout > 0 else 0
    dora = DORA_BYTES if spec.method.type is MethodType.DORA else 0
    extra = sum(layer.count * (dropout * layer.inputs + dora * layer.outputs) for layer in adapted)
    return float(block + extra / max(1, shape.layers))


def _activations(spec: FineTuneJobSpec, model: ModelFacts, head: Head) -> float:
    shape = model.shape
    sequences = spec.training.per_device_batch_size
    tokens = sequences * spec.dataset.max_seq_length
    per_layer = tokens * activation_bytes_per_token_layer(spec, model)
    if spec.training.gradient_checkpointing:
        kept = tokens * shape.hidden * WEIGHT_BYTES * shape.layers + per_layer
    else:
        kept = per_layer * shape.layers
    logits = (tokens if head.per_token else sequences) * head.outputs * 4
    return float(kept + logits)
