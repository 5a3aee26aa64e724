"""causal-lm: a decoder learns to continue text (chat, instructions, completions, plain text),
with loss only where it belongs. Batches carry no padding: each batch's examples are laid end
to end (and each optimizer step's, when they fit fewer micro-batches), or, with `packing`,
the whole dataset is packed into full sequences once. Both need a model whose attention keeps
examples of a row apart; one that does not trains on padded batches, and refuses packing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from kubetune.api import DataFormat
from kubetune.api.spec import DatasetSpec
from kubetune_trainer.data.collate import (
    PackedCollator,
    PaddingCollator,
    PaddingFreeCollator,
    keeps_packed_examples_apart,
    pack,
)
from kubetune_trainer.data.formats import Completion, Conversation, Example, Text
from kubetune_trainer.data.tokenize import DataStats, TokenizedExample, ensure_chat_template, tokenize_example
from kubetune_trainer.errors import InvalidData, InvalidSpec
from kubetune_trainer.samples import Sample, answer, pick
from kubetune_trainer.tasks.base import Answer, Task
from kubetune_trainer.tasks.labels import LabelMap

log = logging.getLogger(__name__)


PACKING_MODEL_TYPES = frozenset({"llama", "mistral", "phi3", "qwen2", "qwen3"})
"""Model types whose attention keeps packed examples apart, checked by the tests: what a model
sharded across ranks (ZeRO-3), which cannot be run before training starts, is judged by."""


def _keeps_examples_apart(model: Any) -> bool:
    if any(hasattr(parameter, "ds_id") for parameter in model.parameters()):
        return getattr(model.config, "model_type", None) in PACKING_MODEL_TYPES
    return keeps_packed_examples_apart(model)


class CausalLm(Task):
    peft_task_type = "CAUSAL_LM"
    model_class_name = "AutoModelForCausalLM"
    perplexity = True

    def prepare_tokenizer(self, tokenizer: Any) -> bool:
        return ensure_chat_template(tokenizer)

    def encode(
        self, example: Example, tokenizer: Any, dataset: DatasetSpec, labels: LabelMap | None, stats: DataStats
    ) -> TokenizedExample | None:
        if not isinstance(example, Conversation | Completion | Text):
            raise InvalidData(f"causal-lm cannot learn from {type(example).__name__} examples")
        return tokenize_example(
            example,
            tokenizer,
            max_length=dataset.max_seq_length,
            truncation=dataset.truncation,
            completion_only=dataset.completion_only_loss,
            stats=stats,
        )

    def arrange(self, encoded: list[Any], dataset: DatasetSpec) -> list[Any]:
        return pack(encoded, dataset.max_seq_length) if dataset.packing else encoded

    def collator(
        self, tokenizer: Any, dataset: DatasetSpec, model: Any = None
    ) -> Callable[[Sequence[Any]], dict[str, Any]]:
        apart = model is None or _keeps_examples_apart(model)
        if dataset.packing and not apart:
            raise InvalidSpec(
                f"dataset.packing: this {model.config.model_type} model attends across the examples of a packed "
                "sequence; set packing to false"
            )
        if dataset.packing:
            return PackedCollator(tokenizer.pad_token_id)
        if not apart:
            log.warning("this %s model attends across packed examples: batches are padded", model.config.model_type)
            return PaddingCollator(tokenizer.pad_token_id)
        return PaddingFreeCollator(tokenizer.pad_token_id)

    def pick(self, examples: Sequence[Example], labels: LabelMap | None, count: int) -> list[Sample]:
        return pick(list(examples), count)

    def answerer(self, model: Any, tokenizer: Any, labels: LabelMap | None, fmt: DataFormat) -> Answer:
        conversation = fmt in (DataFormat.CHAT, DataFormat.INSTRUCTION)
        return lambda sample: answer(model, tokenizer, sample.prompt, conversation)
