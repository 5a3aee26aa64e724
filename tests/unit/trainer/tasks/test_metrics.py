"""The task metrics against cases worked out by hand."""

from __future__ import annotations

import pytest

from kubetune_trainer.tasks.metrics import accuracy, bleu, confusion, entities, entity_scores, is_bio, macro_f1


def test_accuracy_and_confusion_count_each_pair() -> None:
    truth = [0, 0, 1, 1, 2, 2]
    guess = [0, 1, 1, 1, 2, 0]

    assert accuracy(truth, guess) == pytest.approx(4 / 6)
    assert confusion(truth, guess, 3) == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_macro_f1_weighs_every_class_alike() -> None:
    # class 0: 1 hit of 2 guessed and 2 held -> 0.5; class 1: 2 of 3 and 2 -> 0.8; class 2: 1 of 1 and 2 -> 2/3
    truth = [0, 0, 1, 1, 2, 2]
    guess = [0, 1, 1, 1, 2, 0]

    assert macro_f1(truth, guess) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_a_class_only_guessed_counts_as_zero_in_macro_f1() -> None:
    assert macro_f1([0, 0], [0, 1]) == pytest.approx((2 / 3 + 0.0) / 2)


def test_entities_follow_conlleval() -> None:
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "B-ORG", "I-PER"]

    # A leading I- opens an entity; B- after an entity closes it; an I- of another type opens a new one.
    assert entities(tags) == {("PER", 0, 1), ("LOC", 3, 4), ("LOC", 5, 5), ("ORG", 6, 6), ("PER", 7, 7)}


def test_entity_scores_need_type_and_both_ends() -> None:
    truth = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    guess = [["B-PER", "O", "O", "B-LOC"], ["B-LOC", "O"]]

    scores = entity_scores(truth, guess)

    # Only LOC (0, 3, 3) is found whole: 1 hit of 3 guessed, of 3 held.
    assert (scores.precision, scores.recall, scores.f1) == pytest.approx((1 / 3, 1 / 3, 1 / 3))


def test_bio_tag_names_are_recognised() -> None:
    assert is_bio(["O", "B-PER", "I-PER"])
    assert not is_bio(["NOUN", "VERB"])
    assert not is_bio(["O", "I-PER"])


def test_bleu_is_sacrebleu_corpus_bleu() -> None:
    perfect = bleu(["the cat sat on the mat today"], ["the cat sat on the mat today"])
    partial = bleu(["the cat sat on a mat today"], ["the cat sat on the mat today"])

    assert perfect == pytest.approx(100.0)
    assert 0 < partial < 100
