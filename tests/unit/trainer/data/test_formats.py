from __future__ import annotations

from typing import Any

import pytest

from kubetune.api import DataFormat
from kubetune_trainer.data.formats import Completion, Conversation, Message, Text, detect_format, to_example
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
