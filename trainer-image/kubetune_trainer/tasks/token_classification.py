"""token-classification: one tag per word (BIO entity tags, parts of speech), predicted by a
new head over every token. A word's tag is learnt and read on its first sub-word token;
the rest of the word, and the special tokens, are ignored. Measured per entity (CoNLL's
rules) when the tags are BIO, and per word always."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kubetune.api import DataFormat
from kubetune.api.spec import DatasetSpec
from kubetune.contract import Confusion
from kubetune_trainer.data.collate import PaddingCollator
from kubetune_trainer.data.formats import Example, TaggedWords
from kubetune_trainer.data.tokenize import IGNORE_INDEX, DataStats, TokenizedExample, fit, length_limit, truncating
from kubetune_trainer.errors import InvalidData, InvalidSpec
from kubetune_trainer.samples import Sample
from kubetune_trainer.tasks.base import Answer, Metrics, Task
from kubetune_trainer.tasks.labels import LabelMap, LabelValue
from kubetune_trainer.tasks.metrics import accuracy, confusion, entity_scores, is_bio, macro_f1
from kubetune_trainer.tasks.sequence_classification import CLASSIFIER_HEADS, classifier_kwargs


class TokenClassification(Task):
    peft_task_type = "TOKEN_CLS"
    model_class_name = "AutoModelForTokenClassification"
    head_names = CLASSIFIER_HEADS
    figures = ("entity_precision", "entity_recall", "entity_f1", "token_accuracy", "macro_f1")

    def model_kwargs(self, labels: LabelMap | None, tokenizer: Any) -> dict[str, Any]:
        return classifier_kwargs(labels, tokenizer)

    def prepare_tokenizer(self, tokenizer: Any) -> bool:
        if not tokenizer.is_fast:
            raise InvalidSpec("token-classification aligns tags to sub-words with a fast tokenizer; the model has none")
        return False

    def label_values(self, examples: Sequence[Example]) -> list[LabelValue]:
        return [
            LabelValue(tag, f"{e.where}: tags[{i}]")
            for e in examples
            if isinstance(e, TaggedWords)
            for i, tag in enumerate(e.tags)
        ]

    def encode(
        self, example: Example, tokenizer: Any, dataset: DatasetSpec, labels: LabelMap | None, stats: DataStats
    ) -> TokenizedExample | None:
        if not isinstance(example, TaggedWords) or labels is None:
            raise InvalidData(f"token-classification learns from tokens-tags rows, not {type(example).__name__}")
        limit = length_limit(dataset.max_seq_length, tokenizer)

        def encode(truncate: bool) -> Any:
            return tokenizer(list(example.tokens), is_split_into_words=True, **truncating(truncate, limit))

        encoded = fit(encode, limit, dataset.truncation, stats)
        if encoded is None:
            return None
        tags = [labels.id_of(LabelValue(tag, f"{example.where}: tags[{i}]")) for i, tag in enumerate(example.tags)]
        targets = [tags[word] if word is not None else IGNORE_INDEX for word in _first_sub_words(encoded.word_ids())]
        ids = list(encoded["input_ids"])
        stats.keep(len(ids), sum(t != IGNORE_INDEX for t in targets))
        return TokenizedExample(ids, targets)

    def collator(
        self, tokenizer: Any, dataset: DatasetSpec, model: Any = None
    ) -> Callable[[Sequence[Any]], dict[str, Any]]:
        return PaddingCollator(tokenizer.pad_token_id)

    def metrics(self, tokenizer: Any, labels: LabelMap | None) -> Metrics:
        assert labels is not None
        return TaggingMetrics(labels)

    def pick(self, examples: Sequence[Example], labels: LabelMap | None, count: int) -> list[Sample]:
        assert labels is not None
        chosen = [e for e in examples if isinstance(e, TaggedWords)][:count]
        return [
            Sample(" ".join(e.tokens), _shown(e.tokens, [_name(labels, t) for t in e.tags]), example=e) for e in chosen
        ]

    def answerer(self, model: Any, tokenizer: Any, labels: LabelMap | None, fmt: DataFormat) -> Answer:
        assert labels is not None

        def respond(sample: Sample) -> str:
            words: tuple[str, ...] = sample.example.tokens
            inputs = tokenizer(list(words), is_split_into_words=True, truncation=True, return_tensors="pt")
            was_training = model.training
            model.eval()
            with torch.no_grad():
                guesses = model(**inputs.to(model.device)).logits.argmax(-1)[0].tolist()
            model.train(was_training)
            firsts = _first_sub_words(inputs.word_ids())
            tags = {word: labels.names[guesses[i]] for i, word in enumerate(firsts) if word is not None}
            return _shown(words, [tags.get(i, "O") for i in range(len(words))])

        return respond


@dataclass
class TaggingMetrics(Metrics):
    labels: LabelMap

    def __call__(self, prediction: Any) -> dict[str, float]:
        references: list[list[int]] = []
        predictions: list[list[int]] = []
        for truth, guess in zip(prediction.label_ids, prediction.predictions, strict=True):
            kept = [(int(t), int(g)) for t, g in zip(truth, guess, strict=True) if t != IGNORE_INDEX]
            references.append([t for t, _ in kept])
            predictions.append([g for _, g in kept])
        flat_truth = [t for row in references for t in row]
        flat_guess = [g for row in predictions for g in row]
        names = self.labels.names
        self.confusion = Confusion(labels=list(names), matrix=confusion(flat_truth, flat_guess, len(names)))
        figures = {"token_accuracy": accuracy(flat_truth, flat_guess), "macro_f1": macro_f1(flat_truth, flat_guess)}
        if is_bio(names):
            scores = entity_scores(
                [[names[t] for t in row] for row in references], [[names[g] for g in row] for row in predictions]
            )
            figures |= {"entity_precision": scores.precision, "entity_recall": scores.recall, "entity_f1": scores.f1}
        return figures


def _first_sub_words(word_ids: list[int | None]) -> list[int | None]:
    """Each token's word where the token starts that word; None elsewhere."""
    out: list[int | None] = []
    previous = None
    for word in word_ids:
        out.append(word if word is not None and word != previous else None)
        previous = word
    return out


def _name(labels: LabelMap, tag: str | int) -> str:
    return labels.names[labels.id_of(LabelValue(tag, ""))]


def _shown(words: Sequence[str], tags: Sequence[str]) -> str:
    """Words with their tags, the O tags left out: "Ada/B-PER visited Paris/B-LOC"."""
    return " ".join(word if tag == "O" else f"{word}/{tag}" for word, tag in zip(words, tags, strict=True))
