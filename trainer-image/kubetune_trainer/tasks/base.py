"""What a task decides in a run: the model class and its peft task type, how examples become
token ids, how they are batched, what is measured on the evaluation split, and what a
sample answer looks like. One subclass per task, chosen in `kubetune_trainer.tasks`."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kubetune.api import DataFormat
from kubetune.api.spec import DatasetSpec
from kubetune.contract import Confusion, Figures
from kubetune_trainer.data.formats import Example
from kubetune_trainer.data.tokenize import DataStats
from kubetune_trainer.samples import Sample
from kubetune_trainer.tasks.labels import LabelMap, LabelValue

Answer = Callable[[Sample], str]
"""A model's answer to a sample, as text."""


@dataclass
class Metrics(ABC):
    """The Trainer's compute_metrics for a task: scalar figures by name, and what of the
    latest evaluation does not fit a log line (a classifier's confusion matrix)."""

    confusion: Confusion | None = field(default=None, init=False)

    def preprocess(self, logits: Any, labels: Any) -> Any:
        """What the Trainer keeps of each evaluation batch: the predicted ids, not the logits."""
        if isinstance(logits, tuple):
            logits = logits[0]
        return logits.argmax(dim=-1)

    @abstractmethod
    def __call__(self, prediction: Any) -> dict[str, float]:
        """Figures of one evaluation from the Trainer's EvalPrediction (numpy predictions and label ids)."""


class Task(ABC):
    peft_task_type: ClassVar[str]
    """peft's TaskType: it decides which PeftModel class wraps the model."""
    model_class_name: ClassVar[str]
    """The transformers auto class that builds the model with the task's head."""
    head_names: ClassVar[tuple[str, ...]] = ()
    """Names the new heads of this task's models go by: kept out of 4-bit quantisation."""
    figures: ClassVar[tuple[str, ...]] = ()
    """The names `metrics` reports, besides the loss."""
    perplexity: ClassVar[bool] = False
    """Whether the loss is a per-token language-model loss, so exp(loss) means something."""

    def model_class(self) -> Any:
        import transformers

        return getattr(transformers, self.model_class_name)

    def model_kwargs(self, labels: LabelMap | None, tokenizer: Any) -> dict[str, Any]:
        """Settings of the model's config that the data decides (a classifier's labels)."""
        return {}

    def prepare_tokenizer(self, tokenizer: Any) -> bool:
        """Give the tokenizer what the task needs; True when a documented default was used."""
        return False

    def label_values(self, examples: Sequence[Example]) -> list[LabelValue]:
        """Every label the examples give, for a task that has labels."""
        return []

    @abstractmethod
    def encode(
        self, example: Example, tokenizer: Any, dataset: DatasetSpec, labels: LabelMap | None, stats: DataStats
    ) -> Any | None:
        """Token ids and targets of one example, or None when it is dropped (and counted)."""

    def arrange(self, encoded: list[Any], dataset: DatasetSpec) -> list[Any]:
        """The training items made of the encoded examples (causal-lm packs them)."""
        return encoded

    @abstractmethod
    def collator(
        self, tokenizer: Any, dataset: DatasetSpec, model: Any = None
    ) -> Callable[[Sequence[Any]], dict[str, Any]]:
        """Makes the task's batches; `model` is the model they are for, when it matters how it attends."""

    def metrics(self, tokenizer: Any, labels: LabelMap | None) -> Metrics | None:
        """compute_metrics for the Trainer, or None when the loss says it all."""
        return None

    def trainer_class(self) -> type:
        from kubetune_trainer.trainers import CountingTrainer

        return CountingTrainer

    def arguments_class(self) -> type:
        from transformers import TrainingArguments

        return TrainingArguments

    def arguments(self, eval_items: Sequence[Any], dataset: DatasetSpec) -> dict[str, Any]:
        """Extra TrainingArguments the task needs (seq2seq: generation in evaluation)."""
        return {}

    def summary_figures(self, evaluation: Mapping[str, float]) -> Figures:
        """An evaluation's figures (the Trainer's names) for the summary: the loss, and the
        task's own under camelCase names."""
        out = {"evalLoss": evaluation["eval_loss"]} if "eval_loss" in evaluation else {}
        if self.perplexity and "evalLoss" in out:
            out["perplexity"] = math.exp(min(out["evalLoss"], 700.0))
        for name in self.figures:
            if f"eval_{name}" in evaluation:
                out[_camel(f"eval_{name}")] = evaluation[f"eval_{name}"]
        return Figures.model_validate(out)

    @abstractmethod
    def pick(self, examples: Sequence[Example], labels: LabelMap | None, count: int) -> list[Sample]:
        """Samples to show before and after training."""

    @abstractmethod
    def answerer(self, model: Any, tokenizer: Any, labels: LabelMap | None, fmt: DataFormat) -> Answer:
        """How the model answers a sample's prompt."""


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)
