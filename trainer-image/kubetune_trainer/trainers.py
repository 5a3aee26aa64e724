"""The Trainers a run uses: transformers' own, counting the tokens they train on. Seq2seq
tasks use the generating Trainer, so evaluation scores what the model writes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import Seq2SeqTrainer, Trainer

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

    def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        tokens = inputs.pop("num_tokens", None)
        if tokens is not None and model.training:
            self.meter.tokens += int(tokens)
        return super().compute_loss(model, inputs, *args, **kwargs)

    def prediction_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        # Generation passes the batch to generate(), which refuses keys the model does not take.
        inputs.pop("num_tokens", None)
        return super().prediction_step(model, inputs, *args, **kwargs)


class CountingSeq2SeqTrainer(CountingTrainer, Seq2SeqTrainer):
    """The counting Trainer that generates in evaluation (predict_with_generate)."""
