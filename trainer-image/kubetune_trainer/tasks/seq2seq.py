"""seq2seq: an encoder-decoder model (T5, BART, ...) learns to write a target from a source
(translation, summarisation). Its head is the language-model head it already has, so
nothing new trains in full. Evaluation generates, and is measured by corpus BLEU."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kubetune.api import DataFormat
from kubetune.api.spec import DatasetSpec
from kubetune_trainer.data.collate import Seq2SeqCollator
from kubetune_trainer.data.formats import Completion, Example
from kubetune_trainer.data.tokenize import IGNORE_INDEX, DataStats, TokenizedExample, fit, length_limit, truncating
from kubetune_trainer.errors import InvalidData
from kubetune_trainer.samples import Sample, generate
from kubetune_trainer.tasks.base import Answer, Metrics, Task
from kubetune_trainer.tasks.labels import LabelMap
from kubetune_trainer.tasks.metrics import bleu

GENERATION_MARGIN = 16
"""Tokens an evaluation may write beyond the longest target it is compared with."""


class Seq2Seq(Task):
    peft_task_type = "SEQ_2_SEQ_LM"
    model_class_name = "AutoModelForSeq2SeqLM"
    perplexity = True
    figures = ("bleu",)

    def encode(
        self, example: Example, tokenizer: Any, dataset: DatasetSpec, labels: LabelMap | None, stats: DataStats
    ) -> TokenizedExample | None:
        if not isinstance(example, Completion):
            raise InvalidData(f"seq2seq learns from source-target rows, not {type(example).__name__}")
        limit = length_limit(dataset.max_seq_length, tokenizer)

        def encode(truncate: bool) -> Any:
            return tokenizer(example.prompt, text_target=example.completion, **truncating(truncate, limit))

        encoded = fit(encode, limit, dataset.truncation, stats)
        if encoded is None:
            return None
        source, target = list(encoded["input_ids"]), list(encoded["labels"])
        stats.keep(len(source) + len(target), len(target))
        return TokenizedExample(source, target)

    def collator(
        self, tokenizer: Any, dataset: DatasetSpec, model: Any = None
    ) -> Callable[[Sequence[Any]], dict[str, Any]]:
        return Seq2SeqCollator(tokenizer.pad_token_id)

    def metrics(self, tokenizer: Any, labels: LabelMap | None) -> Metrics:
        return BleuMetrics(tokenizer)

    def trainer_class(self) -> type:
        from kubetune_trainer.trainers import CountingSeq2SeqTrainer

        return CountingSeq2SeqTrainer

    def arguments_class(self) -> type:
        from transformers import Seq2SeqTrainingArguments

        return Seq2SeqTrainingArguments

    def arguments(self, eval_items: Sequence[Any], dataset: DatasetSpec) -> dict[str, Any]:
        longest = max((len(item.labels) for item in eval_items), default=0)
        return {"predict_with_generate": True, "generation_max_length": longest + GENERATION_MARGIN}

    def pick(self, examples: Sequence[Example], labels: LabelMap | None, count: int) -> list[Sample]:
        chosen = [e for e in examples if isinstance(e, Completion)][:count]
        return [Sample(e.prompt, e.completion, example=e) for e in chosen]

    def answerer(self, model: Any, tokenizer: Any, labels: LabelMap | None, fmt: DataFormat) -> Answer:
        return lambda sample: generate(model, tokenizer, sample.prompt)


@dataclass
class BleuMetrics(Metrics):
    tokenizer: Any

    def preprocess(self, logits: Any, labels: Any) -> Any:
        return logits  # with predict_with_generate these are the generated ids already

    def __call__(self, prediction: Any) -> dict[str, float]:
        pad = self.tokenizer.pad_token_id
        written = self._decode(np.where(prediction.predictions == IGNORE_INDEX, pad, prediction.predictions))
        wanted = self._decode(np.where(prediction.label_ids == IGNORE_INDEX, pad, prediction.label_ids))
        return {"bleu": bleu(written, wanted)}

    def _decode(self, ids: Any) -> list[str]:
        return [text.strip() for text in self.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)]
