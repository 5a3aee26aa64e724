"""causal-lm under a preference objective (dpo, orpo): the same decoder learns, from pairs of a
chosen and a rejected answer, to prefer the chosen one. Pairs are encoded answer by answer after
their prompt, batched without padding where the model keeps a row's examples apart, and scored
by the preference Trainer (`kubetune_trainer.preference`). A sample shows a held-out pair and
which answer the model prefers, before and after."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from kubetune.api import DataFormat
from kubetune.api.enums import Objective
from kubetune.api.spec import DatasetSpec, PreferenceSpec
from kubetune_trainer.data.formats import ChatPreference, Example, TextPreference
from kubetune_trainer.data.preference import PairCollator, encode_pair
from kubetune_trainer.data.tokenize import DataStats
from kubetune_trainer.errors import InvalidData
from kubetune_trainer.samples import Sample
from kubetune_trainer.tasks.base import Answer
from kubetune_trainer.tasks.causal_lm import CausalLm, _keeps_examples_apart
from kubetune_trainer.tasks.labels import LabelMap


class Preference(CausalLm):
    """A causal-lm model (its class, peft type and chat template) tuned on preference pairs."""

    perplexity = False
    figures = ("reward_accuracy", "reward_margin", "logp_chosen", "logp_rejected")

    def __init__(self, objective: Objective, preference: PreferenceSpec | None = None) -> None:
        self.objective = objective
        self.preference = preference or PreferenceSpec()

    def encode(
        self, example: Example, tokenizer: Any, dataset: DatasetSpec, labels: LabelMap | None, stats: DataStats
    ) -> Any | None:
        if not isinstance(example, TextPreference | ChatPreference):
            raise InvalidData(f"{self.objective} learns from preference pairs, not {type(example).__name__} examples")
        return encode_pair(
            example, tokenizer, max_length=dataset.max_seq_length, truncation=dataset.truncation, stats=stats
        )

    def arrange(self, encoded: list[Any], dataset: DatasetSpec) -> list[Any]:
        return encoded

    def collator(
        self, tokenizer: Any, dataset: DatasetSpec, model: Any = None
    ) -> Callable[[Sequence[Any]], dict[str, Any]]:
        return PairCollator(tokenizer.pad_token_id, together=model is None or _keeps_examples_apart(model))

    def trainer_class(self) -> Any:
        from kubetune_trainer.preference import PreferenceTrainer

        return functools.partial(PreferenceTrainer, objective=self.objective, preference=self.preference)

    def pick(self, examples: Sequence[Example], labels: LabelMap | None, count: int) -> list[Sample]:
        pairs = [e for e in examples if isinstance(e, TextPreference | ChatPreference)][:count]
        return [Sample(_text(pair.prompt), _text(pair.chosen), example=pair) for pair in pairs]

    def answerer(self, model: Any, tokenizer: Any, labels: LabelMap | None, fmt: DataFormat) -> Answer:
        return Preferred(model, tokenizer)


@dataclass
class Preferred:
    """Which answer of a sample's pair the model gives the higher log-probability, both
    figures, and from a sample's second answer on how far the gap between them moved since its
    first (samples are answered before training, then after). A pair can be preferred the
    wrong way by log-probability and still have moved the right way, which is what dpo's
    reward measures against a reference: with the base as reference the reward margin is beta
    times the move (and its sign decides the reward accuracy)."""

    model: Any
    tokenizer: Any
    first_gaps: dict[int, float] = field(default_factory=dict)

    def __call__(self, sample: Sample) -> str:
        chosen, rejected = log_probabilities(self.model, self.tokenizer, sample.example)
        said = describe(chosen, rejected, self.first_gaps.get(id(sample)))
        self.first_gaps.setdefault(id(sample), chosen - rejected)
        return said


def describe(chosen: float, rejected: float, first_gap: float | None) -> str:
    """A sample's answer: the answer preferred, its figures and the gap's move since `first_gap`."""
    which = "chosen" if chosen > rejected else "rejected"
    said = f"prefers the {which} answer (log-probability {chosen:.2f} chosen, {rejected:.2f} rejected"
    if first_gap is None:
        return said + ")"
    moved = round(chosen - rejected - first_gap, 2)
    if moved == 0:
        return said + "; the gap is where it was before)"
    direction = "towards" if moved > 0 else "away from"
    return said + f"; the gap moved {abs(moved):.2f} {direction} the chosen since before)"


def log_probabilities(model: Any, tokenizer: Any, pair: TextPreference | ChatPreference) -> tuple[float, float]:
    """The summed log-probabilities the model gives the pair's chosen and rejected answer."""
    from kubetune_trainer.preference import score

    device = next(model.parameters()).device
    batch = PairCollator(tokenizer.pad_token_id, together=False)([_encoded(pair, tokenizer)])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            scores = score(model, {key: value.to(device) for key, value in batch.items()})
    finally:
        model.train(was_training)
    return float(scores.chosen[0]), float(scores.rejected[0])


def _encoded(pair: TextPreference | ChatPreference, tokenizer: Any) -> Any:
    from kubetune.api import Truncation

    encoded = encode_pair(pair, tokenizer, max_length=1 << 20, truncation=Truncation.TRUNCATE, stats=DataStats())
    assert encoded is not None, "a checked pair always has answer tokens"
    return encoded


def _text(part: Any) -> str:
    """A prompt or answer as a person reads it: the text, or the messages' contents."""
    return part if isinstance(part, str) else "\n".join(m.content for m in part)
