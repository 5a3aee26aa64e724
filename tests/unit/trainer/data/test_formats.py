from __future__ import annotations

from typing import Any

import pytest

from kubetune.api import DataFormat, TaskType
from kubetune_trainer.data.formats import (
    Completion,
    Conversation,
    LabelledText,
    Message,
    TaggedWords,
    Text,
    detect_format,
    to_example,
)
from kubetune_trainer.data.readers import Row
from kubetune_trainer.errors import InvalidData


def _row(values: dict[str, Any]) -> Row:
    return Row(values, "train.jsonl line 7")


CHAT = {
    "messages": [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
}


@pytest.mark.parametrize(
    ("values", "fmt"),
    [
        (CHAT, DataFormat.CHAT),
        ({"instruction": "Add", "input": "1 1", "output": "2"}, DataFormat.INSTRUCTION),
        ({"prompt": "1+1=", "completion": "2"}, DataFormat.PROMPT_COMPLETION),
        ({"text": "plain"}, DataFormat.TEXT),
    ],
)
def test_auto_detects_each_format(values: dict[str, Any], fmt: DataFormat) -> None:
    assert detect_format(_row(values)) is fmt


def test_unknown_columns_are_named() -> None:
    with pytest.raises(InvalidData, match=r"train.jsonl line 7: cannot tell the format from the columns \(answer, q\)"):
        detect_format(_row({"q": "x", "answer": "y"}))


def test_each_format_becomes_its_example() -> None:
    assert to_example(DataFormat.CHAT, _row(CHAT)) == Conversation(
        (Message("system", "Be kind."), Message("user", "Hi"), Message("assistant", "Hello!"))
    )
    assert to_example(DataFormat.INSTRUCTION, _row({"instruction": "Add", "input": "1 1", "output": "2"})) == (
        Conversation((Message("user", "Add\n\n1 1"), Message("assistant", "2")))
    )
    assert to_example(DataFormat.PROMPT_COMPLETION, _row({"prompt": "a", "completion": "b"})) == Completion("a", "b")
    assert to_example(DataFormat.TEXT, _row({"text": "t"})) == Text("t")


@pytest.mark.parametrize(
    ("fmt", "values", "expected"),
    [
        (DataFormat.CHAT, {"messages": []}, "messages must be a non-empty list"),
        (DataFormat.CHAT, {"messages": [{"content": "x"}]}, r"messages\[0\]: missing role"),
        (DataFormat.CHAT, {"messages": [{"role": "bot", "content": "x"}]}, r"messages\[0\]: unknown role 'bot'"),
        (
            DataFormat.CHAT,
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]},
            r"messages\[1\]: empty assistant turn",
        ),
        (DataFormat.CHAT, {"messages": [{"role": "user", "content": "x"}]}, "no assistant turn to learn from"),
        (DataFormat.CHAT, {"messages": [{"role": "user", "content": 3}]}, r"messages\[0\]: content must be a string"),
        (
            DataFormat.CHAT,
            {"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]},
            "a system message may only come first",
        ),
        (DataFormat.INSTRUCTION, {"instruction": "x"}, "missing output"),
        (DataFormat.INSTRUCTION, {"instruction": "", "output": "y"}, "instruction is empty"),
        (DataFormat.PROMPT_COMPLETION, {"prompt": "x", "completion": 5}, "completion must be a string, found int"),
        (DataFormat.TEXT, {"text": None}, "missing text"),
    ],
)
def test_bad_rows_are_located_and_explained(fmt: DataFormat, values: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidData, match=f"^train.jsonl line 7: .*{expected}"):
        to_example(fmt, _row(values))


@pytest.mark.parametrize(
    ("values", "task", "fmt"),
    [
        ({"text": "great", "label": "positive"}, TaskType.SEQUENCE_CLASSIFICATION, DataFormat.TEXT_LABEL),
        ({"text": "great", "label": "positive"}, TaskType.CAUSAL_LM, DataFormat.TEXT),
        ({"tokens": ["Ada"], "tags": ["B-PER"]}, TaskType.TOKEN_CLASSIFICATION, DataFormat.TOKENS_TAGS),
        ({"source": "hello", "target": "bonjour"}, TaskType.SEQ2SEQ, DataFormat.SOURCE_TARGET),
        ({"prompt": "hello", "completion": "bonjour"}, TaskType.SEQ2SEQ, DataFormat.PROMPT_COMPLETION),
    ],
)
def test_auto_detection_tries_only_the_tasks_formats(values: dict[str, Any], task: TaskType, fmt: DataFormat) -> None:
    assert detect_format(_row(values), task.formats) is fmt


def test_a_row_without_the_tasks_columns_names_what_the_task_reads() -> None:
    with pytest.raises(InvalidData, match=r"expected text-label: label, text"):
        detect_format(_row({"text": "no label"}), TaskType.SEQUENCE_CLASSIFICATION.formats)


def test_text_label_rows_keep_a_pair_and_a_numeric_label() -> None:
    example = to_example(
        DataFormat.TEXT_LABEL, _row({"text": "A man sleeps.", "text_pair": "A man rests.", "label": 0})
    )

    assert example == LabelledText("A man sleeps.", 0, "A man rests.")
    assert isinstance(example, LabelledText) and example.where == "train.jsonl line 7"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"text": "x"}, "missing label"),
        ({"text": "x", "label": True}, "a label is a name or a whole-number id, found bool"),
        ({"text": "x", "label": -1}, "label id -1 is negative"),
        ({"text": "x", "label": " "}, "label is empty"),
        ({"text": "x", "label": "a", "text_pair": 3}, "text_pair must be a string"),
    ],
)
def test_bad_text_label_rows_say_what_is_wrong(values: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidData, match=f"train.jsonl line 7: {message}"):
        to_example(DataFormat.TEXT_LABEL, _row(values))


def test_tokens_and_tags_may_be_lists_or_strings_of_words() -> None:
    listed = to_example(DataFormat.TOKENS_TAGS, _row({"tokens": ["Ada", "wrote"], "tags": ["B-PER", "O"]}))
    spaced = to_example(DataFormat.TOKENS_TAGS, _row({"tokens": "Ada wrote", "tags": "B-PER O"}))

    assert listed == spaced == TaggedWords(("Ada", "wrote"), ("B-PER", "O"))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tokens": "Ada wrote code", "tags": "B-PER O"}, "3 tokens but 2 tags; give one tag per token"),
        ({"tokens": [], "tags": []}, "tokens is empty"),
        ({"tokens": ["Ada", ""], "tags": ["B-PER", "O"]}, r"tokens\[1\] must be a non-empty string"),
        ({"tokens": ["Ada"], "tags": [1.5]}, r"tags\[0\]: a label is a name or a whole-number id, found float"),
        ({"tokens": {"a": 1}, "tags": ["O"]}, "tokens must be a list or a string of words"),
    ],
)
def test_bad_tokens_tags_rows_say_what_is_wrong(values: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidData, match=f"train.jsonl line 7: {message}"):
        to_example(DataFormat.TOKENS_TAGS, _row(values))


def test_source_target_rows_become_completions() -> None:
    example = to_example(DataFormat.SOURCE_TARGET, _row({"source": "hello", "target": "bonjour"}))

    assert example == Completion("hello", "bonjour")
