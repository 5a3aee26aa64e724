"""Label names: from the spec or from the data, checked against every example before a model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune_trainer.errors import InvalidData
from kubetune_trainer.tasks.labels import LabelMap, LabelValue, build_label_map


def _values(*labels: str | int) -> list[LabelValue]:
    return [LabelValue(label, f"train.jsonl line {i + 1}") for i, label in enumerate(labels)]


def test_names_from_the_data_are_sorted() -> None:
    labels = build_label_map(_values("spam", "ham", "spam"), [], None)

    assert labels.names == ("ham", "spam")
    assert labels.label2id == {"ham": 0, "spam": 1}


def test_numbers_stand_for_themselves_and_digit_names_sort_by_value() -> None:
    assert build_label_map(_values(2, 0, 1), [], None).names == ("0", "1", "2")
    assert build_label_map(_values("10", "2", "1"), [], None).names == ("1", "2", "10")


def test_the_spec_fixes_the_order_and_numbers_index_it() -> None:
    labels = build_label_map(_values("positive", 0), [], ["negative", "positive"])

    assert labels.names == ("negative", "positive")
    assert labels.id_of(LabelValue("positive", "x")) == 1
    assert labels.id_of(LabelValue(0, "x")) == 0


def test_an_unknown_label_is_named_with_its_place() -> None:
    with pytest.raises(InvalidData, match=r"eval.jsonl line 3: unknown label 'maybe'; the labels are no, yes"):
        build_label_map(_values("yes", "no"), [LabelValue("maybe", "eval.jsonl line 3")], None)


def test_an_id_beyond_the_labels_is_refused() -> None:
    with pytest.raises(InvalidData, match=r"train.jsonl line 1: label id 5 is out of range 0..1"):
        build_label_map(_values(5), [], ["a", "b"])


def test_mixed_numbers_and_names_are_refused() -> None:
    with pytest.raises(InvalidData, match="labels mix numbers and names"):
        build_label_map(_values(0, "one"), [], None)


def test_one_class_is_not_enough() -> None:
    with pytest.raises(InvalidData, match="a classifier needs at least two"):
        build_label_map(_values("only", "only"), [], None)


def test_saved_names_read_back(tmp_path: Path) -> None:
    labels = LabelMap(("O", "B-PER", "I-PER"))

    labels.save(tmp_path)

    assert LabelMap.load(tmp_path) == labels
