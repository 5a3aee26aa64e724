"""Task metrics as pure functions of predictions and references: accuracy, macro-F1 and the
confusion matrix for classification, entity-level precision, recall and F1 for BIO tags
(CoNLL's rules), and corpus BLEU (sacrebleu) for generated text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Entity = tuple[str, int, int]
"""(type, first word, last word) of an entity in a tag sequence."""


def confusion(references: Sequence[int], predictions: Sequence[int], classes: int) -> list[list[int]]:
    """counts[true][predicted]."""
    counts = [[0] * classes for _ in range(classes)]
    for truth, guess in zip(references, predictions, strict=True):
        counts[truth][guess] += 1
    return counts


def accuracy(references: Sequence[int], predictions: Sequence[int]) -> float:
    if not references:
        return 0.0
    return sum(t == p for t, p in zip(references, predictions, strict=True)) / len(references)


def macro_f1(references: Sequence[int], predictions: Sequence[int]) -> float:
    """The unweighted mean of each class's F1, over the classes that occur in the references
    or the predictions (a class neither holds nor guesses says nothing)."""
    classes = sorted(set(references) | set(predictions))
    if not classes:
        return 0.0
    scores = []
    for label in classes:
        hits = sum(t == p == label for t, p in zip(references, predictions, strict=True))
        guessed = sum(p == label for p in predictions)
        held = sum(t == label for t in references)
        scores.append(_f1(hits, guessed, held))
    return sum(scores) / len(scores)


def is_bio(names: Sequence[str]) -> bool:
    """Whether tag names follow the BIO scheme (O, B-TYPE, I-TYPE), so entities can be read."""
    return any(n.startswith("B-") for n in names) and all(n == "O" or n[:2] in ("B-", "I-") for n in names)


def entities(tags: Sequence[str]) -> set[Entity]:
    """The entities of a BIO sequence, read as CoNLL's conlleval reads them: B- opens one, I-
    continues one of its own type and otherwise opens a new one, O and the end close it."""
    found: set[Entity] = set()
    kind: str | None = None
    start = 0
    for index, tag in enumerate([*tags, "O"]):
        prefix, _, tag_kind = tag.partition("-")
        continues = prefix == "I" and tag_kind == kind
        if kind is not None and not continues:
            found.add((kind, start, index - 1))
            kind = None
        if prefix in ("B", "I") and not continues:
            kind, start = tag_kind, index
    return found


@dataclass(frozen=True)
class EntityScores:
    precision: float
    recall: float
    f1: float


def entity_scores(references: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]]) -> EntityScores:
    """Micro-averaged over every entity of every sentence: an entity counts only when its
    type and both of its ends are right."""
    hits = guessed = held = 0
    for truth, guess in zip(references, predictions, strict=True):
        true_entities, guessed_entities = entities(truth), entities(guess)
        hits += len(true_entities & guessed_entities)
        guessed += len(guessed_entities)
        held += len(true_entities)
    precision = hits / guessed if guessed else 0.0
    recall = hits / held if held else 0.0
    return EntityScores(precision, recall, _f1(hits, guessed, held))


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0 to 100) with sacrebleu's standard settings (13a tokenisation)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def _f1(hits: int, guessed: int, held: int) -> float:
    return 2 * hits / (guessed + held) if guessed + held else 0.0
