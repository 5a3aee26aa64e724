"""sequence-classification: one label per text (or pair of texts), predicted by a new head
over the model's pooled or last-token state. Measured by accuracy and macro-F1, with the
confusion matrix kept for the report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kubetune.api import DataFormat
from kubetune.api.spec import DatasetSpec
from kubetune.contract import Confusion
from kubetune_trainer.data.collate import ClassificationCollator
from kubetune_trainer.data.formats import Example, LabelledText
from kubetune_trainer.data.tokenize import ClassifiedExample, DataStats, fit, length_limit, truncating
from kubetune_trainer.errors import InvalidData
from kubetune_trainer.samples import Sample
from kubetune_trainer.tasks.base import Answer, Metrics, Task
from kubetune_trainer.tasks.labels import LabelMap, LabelValue
from kubetune_trainer.tasks.metrics import accuracy, confusion, macro_f1

CLASSIFIER_HEADS = ("classifier", "score")
"""What transformers calls the new head of its classification models (BERT-like; decoders)."""


def classifier_kwargs(labels: LabelMap | None, tokenizer: Any) -> dict[str, Any]:
    """The labels a classifier's config carries (so a saved model names its predictions) and
    the padding id a decoder's classifier needs to find each text's last token."""
    assert labels is not None, "classification tasks build their label map before the model"
    return {
        "num_labels": len(labels),
        "id2label": labels.id2label,
        "label2id": labels.label2id,
        "pad_token_id": tokenizer.pad_token_id,
    }


class SequenceClassification(Task):
    peft_task_type = "SEQ_CLS"
    model_class_name = "AutoModelForSequenceClassification"
    head_names = CLASSIFIER_HEADS
    figures = ("accuracy", "macro_f1")

    def model_kwargs(self, labels: LabelMap | None, tokenizer: Any) -> dict[str, Any]:
        return classifier_kwargs(labels, tokenizer)

    def label_values(self, examples: Sequence[Example]) -> list[LabelValue]:
        return [LabelValue(e.label, e.where) for e in examples if isinstance(e, LabelledText)]

    def encode(
        self, example: Example, tokenizer: Any, dataset: DatasetSpec, labels: LabelMap | None, stats: DataStats
    ) -> ClassifiedExample | None:
        if not isinstance(example, LabelledText) or labels is None:
            raise InvalidData(f"sequence-classification learns from text-label rows, not {type(example).__name__}")

        limit = length_limit(dataset.max_seq_length, tokenizer)

        def encode(truncate: bool) -> Any:
            return tokenizer(example.text, example.text_pair, **truncating(truncate, limit))

        encoded = fit(encode, limit, dataset.truncation, stats)
        if encoded is None:
            return None
        ids = list(encoded["input_ids"])
        stats.keep(len(ids), len(ids))
        types = encoded.get("token_type_ids")
        return ClassifiedExample(ids, labels.id_of(LabelValue(example.label, example.where)), types and list(types))

    def collator(
        self, tokenizer: Any, dataset: DatasetSpec, model: Any = None
    ) -> Callable[[Sequence[Any]], dict[str, Any]]:
        return ClassificationCollator(tokenizer.pad_token_id)

    def metrics(self, tokenizer: Any, labels: LabelMap | None) -> Metrics:
        assert labels is not None
        return ClassificationMetrics(labels)

    def pick(self, examples: Sequence[Example], labels: LabelMap | None, count: int) -> list[Sample]:
        assert labels is not None
        texts = [e for e in examples if isinstance(e, LabelledText)]
        ids = [labels.id_of(LabelValue(e.label, e.where)) for e in texts]
        # One text of each class first, so that the samples show more than one label.
        firsts = {label: i for i, label in reversed(list(enumerate(ids)))}
        order = sorted(range(len(texts)), key=lambda i: (firsts[ids[i]] != i, i))[:count]
        return [Sample(_shown(texts[i]), labels.names[ids[i]], example=texts[i]) for i in order]

    def answerer(self, model: Any, tokenizer: Any, labels: LabelMap | None, fmt: DataFormat) -> Answer:
        assert labels is not None

        def respond(sample: Sample) -> str:
            example: LabelledText = sample.example
            inputs = tokenizer(example.text, example.text_pair, return_tensors="pt", truncation=True)
            return labels.names[int(_logits(model, inputs).argmax(-1)[0])]

        return respond


@dataclass
class ClassificationMetrics(Metrics):
    labels: LabelMap

    def __call__(self, prediction: Any) -> dict[str, float]:
        references = [int(v) for v in prediction.label_ids.reshape(-1)]
        predictions = [int(v) for v in prediction.predictions.reshape(-1)]
        self.confusion = Confusion(
            labels=list(self.labels.names), matrix=confusion(references, predictions, len(self.labels))
        )
        return {"accuracy": accuracy(references, predictions), "macro_f1": macro_f1(references, predictions)}


def _logits(model: Any, inputs: Any) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits: torch.Tensor = model(**inputs.to(model.device)).logits
    model.train(was_training)
    return logits


def _shown(example: LabelledText) -> str:
    return example.text if example.text_pair is None else f"{example.text} || {example.text_pair}"
