"""The causal-LM loss without the [tokens x vocabulary] logits.

A decoder's output head turns every position's hidden state into a score per vocabulary
entry; with a vocabulary of 50k-150k those logits, their fp32 copy and their gradient are
most of a small model's activation memory and a large part of its step. Here only the
positions that have a target go through the head (completion-only loss skips the prompt's
entirely), a chunk of them at a time, and each chunk's gradient is made at once, so one
chunk's logits exist at any moment. The loss and its normalisation are transformers'
(`ForCausalLMLoss`): summed and divided by `num_items_in_batch` when the Trainer counts the
step's targets (gradient accumulation, ranks), otherwise the mean over the batch's targets.

The model's own forward still runs, through whatever wraps it (peft, DDP), with its head
replaced for that forward by one that passes the hidden states on and a loss function that
takes them: data-parallel wrappers see the loss come out of the forward, as they expect.
Where a model's forward does something to the logits between head and loss that this path
cannot reproduce, or the head's weight is not whole in this process, the plain path runs.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
CHUNK_BYTES = 64 * 2**20
"""About what one chunk's fp32 logits may take: a few times a core's cache, where a product of
a few hundred rows against the whole head runs as fast per row as a larger one."""
MIN_CHUNK, MAX_CHUNK = 128, 4096


def chunk_rows(vocab: int) -> int:
    """Targets per chunk for a head of `vocab` outputs: the power of two whose fp32 logits come
    nearest below CHUNK_BYTES (256 for a 49k vocabulary, 128 for 152k), within the bounds."""
    rows = max(1, CHUNK_BYTES // (4 * vocab))
    return min(MAX_CHUNK, max(MIN_CHUNK, 1 << (rows.bit_length() - 1)))


HEAD_THEN_LOSS_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3"})
"""Model types whose forward hands the head's output straight to `self.loss_function` (no soft
capping, scaling or casting in between), checked by the tests against the plain loss. Gemma 2
and 3 cap their logits with tanh and Cohere scales them: those keep the plain path."""


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` against `targets`, one chunk of rows at a time.

    The gradients are made in the forward pass, chunk by chunk, while each chunk's logits exist
    (Liger's scheme): the loss is a scalar, so the backward only scales them. That costs the
    products the plain path makes (the logits, the hidden states' gradient and, when the head
    trains, its weight's) and never holds more than one chunk's logits and their gradient."""

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int, dtype: torch.dtype
    ) -> torch.Tensor:
        wants_hidden, wants_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        product_weight = weight.to(dtype)
        # The hidden states' gradient multiplies by the weight untransposed. On a CPU without
        # native bf16 products, a 16-bit product whose right side is a [vocabulary, hidden]
        # matrix read row-major takes a path over ten times slower than the same product as a
        # linear layer's forward, over a transposed copy (bench/NOTES.md, changes 4 and 6). In
        # fp32, and on accelerators, the product reads the weight as it lies: the copy would
        # cost the whole head's size again (545 MB on a Qwen2.5-0.5B shape) for nothing.
        copied = wants_hidden and hidden.device.type == "cpu" and dtype in (torch.bfloat16, torch.float16)
        transposed = product_weight.T.contiguous() if copied else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        hidden_grad = torch.empty_like(hidden) if wants_hidden else None
        weight_grad = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if wants_weight else None
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk):
                rows = hidden[start : start + chunk].to(dtype)
                wanted = targets[start : start + chunk]
                # As transformers computes them: the product in the compute dtype, the softmax in fp32.
                logits = (rows @ product_weight.T).float()
                normaliser = torch.logsumexp(logits, dim=-1)
                total += (normaliser - logits.gather(1, wanted[:, None]).squeeze(1)).sum()
                if not (wants_hidden or wants_weight):
                    continue
                # d(summed loss)/d(logits) is softmax minus one-hot, made in the logits' place.
                scores = logits.sub_(normaliser[:, None]).exp_()
                scores[torch.arange(len(wanted), device=scores.device), wanted] -= 1.0
                scores_grad = scores.to(dtype)
                if hidden_grad is not None:
                    hidden_grad[start : start + chunk] = (
                        nn.functional.linear(scores_grad, transposed)
                        if transposed is not None
                        else scores_grad @ product_weight
                    )
                if weight_grad is not None:
                    weight_grad += scores_grad.T @ rows
        ctx.save_for_backward(
            hidden_grad if hidden_grad is not None else torch.empty(0),
            weight_grad if weight_grad is not None else torch.empty(0),
        )
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx: Any, loss_grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden_grad, weight_grad = ctx.saved_tensors
        wants_hidden, wants_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        return (
            hidden_grad * loss_grad.to(hidden_grad.dtype) if wants_hidden else None,
            (weight_grad * loss_grad).to(ctx.weight_dtype) if wants_weight else None,
            None,
            None,
            None,
        )


def linear_cross_entropy(
    hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, chunk: int | None = None
) -> torch.Tensor:
    """The summed cross-entropy of `head(hidden)` against `targets` (every row has one; none
    is ignored), without all the rows' logits at once. A plain linear head goes through
    Liger's fused kernel on CUDA when liger-kernel is installed, else `LinearCrossEntropy`;
    any other head (adapters on the head, a quantised head) is called on each chunk, and the
    chunk's logits are recomputed in the backward pass. Other objectives (preference losses)
    can call this with the positions they score. `chunk` defaults to `chunk_rows`."""
    if chunk is None:
        chunk = chunk_rows(_outputs(head))
    if _plain_linear(head):
        weight = head.weight
        fused = _liger_loss() if hidden.is_cuda else None
        if fused is not None:
            summed: torch.Tensor = fused(weight, hidden, targets)
            return summed
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        return LinearCrossEntropy.apply(hidden, weight, targets, chunk, dtype)  # type: ignore[no-any-return]
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk):
        rows, wanted = hidden[start : start + chunk], targets[start : start + chunk]
        total = total + checkpoint(_chunk_loss, head, rows, wanted, use_reentrant=False)
    return total


def _outputs(head: nn.Module) -> int:
    """The head's outputs: linear layers, quantised ones (whose weight is packed) and peft's
    adapter layers say it; otherwise the weight's rows."""
    outputs = getattr(head, "out_features", None)
    if isinstance(outputs, int):
        return outputs
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"cannot tell the outputs of {type(head).__name__}: give the chunk size")
    return int(weight.shape[0])


def _chunk_loss(head: nn.Module, rows: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(head(rows).float(), wanted, reduction="sum")


def _plain_linear(head: nn.Module) -> bool:
    """A bare linear layer without bias: quantised layers subclass nn.Linear, hence the exact type."""
    return type(head) is nn.Linear and head.bias is None


def _liger_loss() -> Any:
    """Liger's fused linear cross-entropy (summed), when liger-kernel is installed."""
    try:  # optional, and CUDA-only: not a dependency of the CPU install
        liger = importlib.import_module("liger_kernel.transformers.fused_linear_cross_entropy")
    except ImportError:
        return None
    return liger.LigerFusedLinearCrossEntropyLoss(reduction="sum")


def causal_lm_loss(
    hidden: torch.Tensor,
    head: nn.Module,
    labels: torch.Tensor | None = None,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = IGNORE_INDEX,
    shift_labels: torch.Tensor | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """transformers' `ForCausalLMLoss` over the hidden states instead of the logits: each
    position predicts the next label (or its `shift_labels`, which padding-free collators may
    give), only positions with a target go through the head, and the sum is divided by
    `num_items_in_batch` when given (the step's targets over accumulation and ranks), else
    by this batch's targets."""
    if shift_labels is None:
        if labels is None:
            raise ValueError("the causal-LM loss needs labels or shift_labels")
        shift_labels = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    targets = shift_labels.reshape(-1).to(hidden.device)
    kept = (targets != ignore_index).nonzero().squeeze(1)
    rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, kept)
    total = linear_cross_entropy(rows, head, targets.index_select(0, kept), chunk)
    if num_items_in_batch is None:
        return total / kept.numel()
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


class _PassHidden(nn.Module):
    """Stands in for the output head during a forward: the hidden states go on to the loss."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


def causal_lm(model: nn.Module) -> nn.Module:
    """The transformers model inside data-parallel, DeepSpeed and peft wrappers."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module  # type: ignore[assignment]
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def plain_path_reason(model: nn.Module, sharded: bool = False) -> str | None:
    """Why this model's loss must go through its full logits, or None when it need not."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if isinstance(model, nn.DataParallel):
        return "DataParallel copies the model onto each GPU in every forward"
    if sharded:
        return "under FSDP the head's weight is whole only inside the forward of the unit that holds it"
    base = causal_lm(model)
    config = getattr(base, "config", None)
    model_type = getattr(config, "model_type", None)
    if (
        model_type not in HEAD_THEN_LOSS_MODEL_TYPES
        or MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type) != type(base).__name__
    ):
        return f"{type(base).__name__}'s forward is not one checked to hand its logits straight to the loss"
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return "the model caps or scales its logits before the loss"
    head = base.get_output_embeddings()  # type: ignore[operator]
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return "the model's output head has no weight to compute with"
    if hasattr(weight, "ds_id"):
        # ZeRO-3 gathers the partitioned weight only inside the head's own forward (and backward).
        return "the head's weight is partitioned (DeepSpeed ZeRO-3)"
    if weight.device.type == "meta":
        return "the head's weight is offloaded and loaded only by the head's own forward"
    return None


@contextmanager
def loss_without_logits(model: nn.Module, sharded: bool = False, chunk: int | None = None) -> Iterator[bool]:
    """For the forwards inside: the model's head passes the hidden states on and its loss
    function is `causal_lm_loss` over them, so a forward with labels returns transformers'
    loss without making the logits (its `logits` are then the hidden states). Yields whether
    it did; where `plain_path_reason` names a reason, the model is left as it is."""
    reason = plain_path_reason(model, sharded)
    if reason is not None:
        _say_once(reason)
        yield False
        return
    base: Any = causal_lm(model)
    head = base.get_output_embeddings()
    had_own_loss = "_loss_function" in vars(base)
    own_loss = vars(base).get("_loss_function")

    def loss_function(logits: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        kwargs.pop("vocab_size", None)
        known = {k: kwargs[k] for k in ("num_items_in_batch", "ignore_index", "shift_labels") if k in kwargs}
        return causal_lm_loss(logits, head, labels, chunk=chunk, **known)

    base.set_output_embeddings(_PassHidden())
    base.loss_function = loss_function
    try:
        yield True
    finally:
        base.set_output_embeddings(head)
        if had_own_loss:
            base.loss_function = own_loss
        else:
            del base._loss_function


_said: set[str] = set()


def _say_once(reason: str) -> None:
    if reason not in _said:
        _said.add(reason)
        log.info("the loss goes through the full logits: %s", reason)
