"""How each task turns examples into token ids and targets, with real tokenizers: MiniLM's
WordPiece (BERT) and the tiny T5's, and how labels are checked before any model loads."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import Truncation
from kubetune.api.spec import DatasetSpec
from kubetune.contract import ExitCode
from kubetune_trainer.data.formats import Completion, LabelledText, TaggedWords, Text
from kubetune_trainer.data.tokenize import IGNORE_INDEX, DataStats
from kubetune_trainer.errors import InvalidData
from kubetune_trainer.main import run
from kubetune_trainer.preflight import check
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.tasks import TASKS
from kubetune_trainer.tasks.causal_lm import CausalLm
from kubetune_trainer.tasks.labels import LabelMap
from kubetune_trainer.tasks.seq2seq import Seq2Seq
from kubetune_trainer.tasks.sequence_classification import SequenceClassification
from kubetune_trainer.tasks.token_classification import TokenClassification

from ..conftest import task_spec, write_jsonl

DATASET = DatasetSpec.model_validate({"configMap": {"name": "d", "key": "d.jsonl"}, "maxSeqLength": 16})


@pytest.fixture(scope="module")
def wordpiece(task_volumes: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(task_volumes / "models" / "all-minilm-l6-v2")


@pytest.fixture(scope="module")
def t5(task_volumes: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(task_volumes / "models" / "tiny-t5")


def test_every_task_has_its_module() -> None:
    from kubetune.api import TaskType

    assert set(TASKS) == set(TaskType)


def test_a_pair_of_texts_keeps_its_segments_and_the_label_id(wordpiece: Any) -> None:
    example = LabelledText("a man sleeps", "billing", text_pair="a man rests")

    encoded = SequenceClassification().encode(
        example, wordpiece, DATASET, LabelMap(("billing", "shipping")), DataStats()
    )

    assert encoded is not None
    assert wordpiece.convert_ids_to_tokens(encoded.input_ids) == [
        "[CLS]", "a", "man", "sleeps", "[SEP]", "a", "man", "rests", "[SEP]",
    ]  # fmt: skip
    assert encoded.token_type_ids == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert encoded.label == 0


@pytest.mark.parametrize(("truncation", "kept"), [(Truncation.TRUNCATE, 16), (Truncation.DROP, None)])
def test_a_long_text_is_truncated_keeping_its_end_token_or_dropped(
    wordpiece: Any, truncation: Truncation, kept: int | None
) -> None:
    stats = DataStats()
    dataset = DATASET.model_copy(update={"truncation": truncation})

    encoded = SequenceClassification().encode(
        LabelledText("word " * 40, 1), wordpiece, dataset, LabelMap(("a", "b")), stats
    )

    assert (encoded and len(encoded.input_ids)) == kept
    assert (stats.truncated, stats.dropped_too_long, stats.longest) == (
        (1, 0, 42) if truncation is Truncation.TRUNCATE else (0, 1, 42)
    )
    if encoded is not None:
        assert encoded.input_ids[-1] == wordpiece.sep_token_id


def test_a_words_tag_is_learnt_on_its_first_sub_word_only(wordpiece: Any) -> None:
    example = TaggedWords(("Kubernetes", "runs", "in", "Amsterdam"), ("B-ORG", "O", "O", "B-LOC"))
    labels = LabelMap(("O", "B-ORG", "B-LOC"))
    stats = DataStats()

    encoded = TokenClassification().encode(example, wordpiece, DATASET, labels, stats)

    assert encoded is not None
    pieces = wordpiece.convert_ids_to_tokens(encoded.input_ids)
    tagged = [(piece, labels.names[t]) for piece, t in zip(pieces, encoded.labels, strict=True) if t != IGNORE_INDEX]
    assert tagged == [("ku", "B-ORG"), ("runs", "O"), ("in", "O"), ("amsterdam", "B-LOC")]
    assert pieces[1:4] == ["ku", "##ber", "##net"]  # the rest of the word is ignored
    assert stats.trainable_tokens == 4 < stats.tokens


def test_a_seq2seq_target_is_its_own_sequence_ending_with_eos(t5: Any) -> None:
    stats = DataStats()

    encoded = Seq2Seq().encode(Completion("the red house", "la maison rouge"), t5, DATASET, None, stats)

    assert encoded is not None
    assert encoded.input_ids[-1] == encoded.labels[-1] == t5.eos_token_id
    assert t5.decode(encoded.labels, skip_special_tokens=True) == "la maison rouge"
    assert stats.trainable_tokens == len(encoded.labels)


def test_a_task_refuses_examples_of_another_kind(wordpiece: Any) -> None:
    with pytest.raises(InvalidData, match="causal-lm cannot learn from LabelledText examples"):
        CausalLm().encode(LabelledText("x", "a"), wordpiece, DATASET, None, DataStats())
    with pytest.raises(InvalidData, match="seq2seq learns from source-target rows, not Text"):
        Seq2Seq().encode(Text("x"), wordpiece, DATASET, None, DataStats())


def test_the_models_own_limit_caps_the_sequence_length(wordpiece: Any) -> None:
    from kubetune_trainer.data.tokenize import length_limit

    assert length_limit(2048, wordpiece) == 512
    assert length_limit(64, wordpiece) == 64


def test_preflight_names_the_labels_it_found(task_volumes: Path, tmp_path: Path) -> None:
    spec = task_spec("sequence-classification", "all-minilm-l6-v2", "topics", "lora", ["adapter"])
    runtime = Runtime.from_env({"KUBETUNE_VOLUMES": str(task_volumes), "KUBETUNE_WORK": str(tmp_path)})

    summary = check(spec, runtime)

    assert summary.data is not None
    assert summary.data.labels == ["food", "sports", "technology", "weather"]
    assert summary.data.eval_examples == 64


def test_an_evaluation_label_the_training_data_lacks_fails_before_the_model_loads(
    task_volumes: Path, tmp_path: Path
) -> None:
    claims = tmp_path / "claims"
    write_jsonl(claims / "data" / "x-train.jsonl", [{"text": "a", "label": "yes"}, {"text": "b", "label": "no"}])
    write_jsonl(claims / "data" / "x-eval.jsonl", [{"text": "c", "label": "maybe"}])
    spec = task_spec("sequence-classification", "no-model-here", "x", "lora", ["adapter"])
    runtime = Runtime.from_env(
        {"KUBETUNE_VOLUMES": str(claims), "KUBETUNE_WORK": str(tmp_path / "work"), "KUBETUNE_OUTPUT": str(tmp_path)}
    )

    code, summary = run(spec, dataclasses.replace(runtime, termination_log=tmp_path / "termination-log"))

    assert code is ExitCode.INVALID_DATA
    assert summary.message == "x-eval.jsonl line 1: unknown label 'maybe'; the labels are no, yes"
