"""The label names of a classification task, fixed before the model is built (the head's
size is their count) and saved with every output, so a prediction's id reads back as the
name it was trained on."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_trainer.errors import InvalidData

LABELS_FILE = "labels.json"

Label = str | int


@dataclass(frozen=True)
class LabelValue:
    """One value of a label column (or one tag) and where it was read."""

    value: Label
    where: str


@dataclass(frozen=True)
class LabelMap:
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    def id_of(self, label: LabelValue) -> int:
        """The id of a label as the data gives it: a name, or a number that is the id itself."""
        if isinstance(label.value, int):
            if 0 <= label.value < len(self.names):
                return label.value
            raise InvalidData(f"{label.where}: label id {label.value} is out of range 0..{len(self.names) - 1}")
        try:
            return self.names.index(label.value)
        except ValueError:
            known = ", ".join(self.names[:20]) + (", ..." if len(self.names) > 20 else "")
            raise InvalidData(f"{label.where}: unknown label {label.value!r}; the labels are {known}") from None

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.names)}

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / LABELS_FILE).write_text(json.dumps({"labels": list(self.names)}, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> LabelMap:
        return cls(tuple(json.loads((folder / LABELS_FILE).read_text())["labels"]))


def build_label_map(
    train: Iterable[LabelValue], evaluation: Iterable[LabelValue], given: Sequence[str] | None
) -> LabelMap:
    """The names in force: the spec's, in its order; else those of the training data, sorted
    (numbers, and names that are all digits, by value). Every evaluation label must be one of
    them, since a head cannot predict a class it was never given."""
    train = list(train)
    labels = LabelMap(tuple(given)) if given is not None else _from_data(train)
    for label in [*train, *evaluation]:
        labels.id_of(label)
    return labels


def _from_data(labels: list[LabelValue]) -> LabelMap:
    numbers = [label for label in labels if isinstance(label.value, int)]
    if numbers and len(numbers) != len(labels):
        named = next(label for label in labels if not isinstance(label.value, int))
        raise InvalidData(
            f"{named.where}: labels mix numbers and names ({named.value!r}); use one or the other, "
            "or name every id in dataset.labels"
        )
    if numbers:
        highest = max(int(label.value) for label in numbers)
        return LabelMap(tuple(str(i) for i in range(max(highest + 1, 2))))
    names = {str(label.value) for label in labels}
    if len(names) < 2:
        raise InvalidData(f"the training data has {len(names)} label(s); a classifier needs at least two")
    return LabelMap(tuple(sorted(names, key=_order)))


def _order(name: str) -> tuple[int, Any]:
    return (0, int(name)) if name.isdigit() else (1, name)
