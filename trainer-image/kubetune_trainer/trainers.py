"""The Trainers a run uses: transformers' own, counting the tokens they train on and, with
padding-free batches, laying each optimizer step's examples out together so the step takes
as few forward passes as fit. Seq2seq tasks use the generating Trainer, so evaluation scores
what the model writes."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from transformers import Seq2SeqTrainer, Trainer

from kubetune_trainer.data.collate import EXAMPLES, PaddingFreeCollator, lay_out_step
from kubetune_trainer.loss import loss_without_logits
from kubetune_trainer.progress import TokenMeter


class ListDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, items: Sequence[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]


class CountingTrainer(Trainer):
    """A Trainer that counts trained (non-padding) tokens from the collator's figure."""

    def __init__(self, *args: Any, meter: TokenMeter, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.meter = meter

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list[Any], Any]:
        batches, items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not isinstance(self.data_collator, PaddingFreeCollator):
            return batches, items
        if self.is_deepspeed_enabled:
            # DeepSpeed counts micro-batches itself; every one must run.
            return [{k: v for k, v in b.items() if k != EXAMPLES} for b in batches], items
        return lay_out_step(batches, self.data_collator, self.args.per_device_train_batch_size), items

    def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if not inputs:  # a micro-batch whose examples went into the step's others
            return torch.zeros((), device=self.args.device)
        with self._adapter_inputs_uncast(model):
            return super().training_step(model, inputs, *args, **kwargs)

    def _adapter_inputs_uncast(self, model: Any) -> AbstractContextManager[None]:
        """Under mixed precision, peft casts each adapter layer's input to the adapter's fp32
        weights, and autocast casts it straight back for the product: two copies of every
        activation for nothing (8% of a LoRA step on a CPU, bench/NOTES.md). Without the first cast
        autocast computes the same product in the same precision, and gradients still reach
        the fp32 weights. Outside training (evaluation may generate, outside autocast) and
        under DeepSpeed and FSDP (which cast weights themselves, not through autocast) the cast
        stays on."""
        from peft.helpers import disable_input_dtype_casting

        autocast = (self.args.bf16 or self.args.fp16) and not (self.is_deepspeed_enabled or self.is_fsdp_enabled)
        return disable_input_dtype_casting(model, active=autocast)

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        tokens = inputs.pop("num_tokens", None)
        if tokens is not None and model.training:
            self.meter.tokens += int(tokens)
        with self._loss_without_logits(model, inputs, return_outputs):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _loss_without_logits(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool
    ) -> AbstractContextManager[bool | None]:
        """A causal LM's training forward computes transformers' loss from the hidden states, a
        chunk of targets at a time, without the [tokens x vocabulary] logits (`loss.py`). Other
        tasks, evaluation (which may keep the logits), and the Trainer's own loss variants
        (label smoothing, a custom loss function) keep the model's forward as it is."""
        plain = (
            not model.training
            or return_outputs
            or "labels" not in inputs
            or self.label_smoother is not None
            or self.compute_loss_func is not None
        )
        if plain:
            return nullcontext()
        return loss_without_logits(model, sharded=self.is_fsdp_enabled)

    def prediction_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        # Generation passes the batch to generate(), which refuses keys the model does not take.
        inputs.pop("num_tokens", None)
        inputs.pop(EXAMPLES, None)
        return super().prediction_step(model, inputs, *args, **kwargs)


class CountingSeq2SeqTrainer(CountingTrainer, Seq2SeqTrainer):
    """The counting Trainer that generates in evaluation (predict_with_generate)."""
