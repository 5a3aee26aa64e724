"""causal-lm: a decoder learns to continue text (chat, instructions, completions, plain text),
with loss only where it belongs and, optionally, examples packed into full sequences."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from kubetune.api import DataFormat
from kubetune.api.spec import DatasetSpec
from kubetune_trainer.data.collate import PackedCollator, PaddingCollator, pack
from kubetune_trainer.data.formats import Completion, Conversation, Example, Text
from kubetune_trainer.data.tokenize import DataStats, TokenizedExample, ensure_chat_template, tokenize_example
from kubetune_trainer.errors import InvalidData
from kubetune_trainer.samples import Sample, answer, pick
from kubetune_trainer.tasks.base import Answer, Task
from kubetune_trainer.tasks.labels import LabelMap


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

    def collator(self, tokenizer: Any, dataset: DatasetSpec) -> Callable[[Sequence[Any]], dict[str, Any]]:
        return (PackedCollator if dataset.packing else PaddingCollator)(tokenizer.pad_token_id)

    def pick(self, examples: Sequence[Example], labels: LabelMap | None, count: int) -> list[Sample]:
        return pick(list(examples), count)

    def answerer(self, model: Any, tokenizer: Any, labels: LabelMap | None, fmt: DataFormat) -> Answer:
        conversation = fmt in (DataFormat.CHAT, DataFormat.INSTRUCTION)
        return lambda sample: answer(model, tokenizer, sample.prompt, conversation)
