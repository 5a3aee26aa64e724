"""Dataset formats: recognise them, check each row, and turn rows into examples.

Three kinds of example come out, whatever the format went in:
- Conversation: chat and instruction rows, rendered later with the tokenizer's chat template;
- Completion: a prompt and a completion, trained on the completion;
- Text: plain text, trained on all of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetune.api import DataFormat
from kubetune_trainer.data.readers import Row
from kubetune_trainer.errors import InvalidData

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]


@dataclass(frozen=True)
class Completion:
    prompt: str
    completion: str


@dataclass(frozen=True)
class Text:
    text: str


Example = Conversation | Completion | Text

# The columns that identify each format, in the order auto-detection tries them.
SIGNATURES: tuple[tuple[DataFormat, frozenset[str]], ...] = (
    (DataFormat.CHAT, frozenset({"messages"})),
    (DataFormat.INSTRUCTION, frozenset({"instruction", "output"})),
    (DataFormat.PROMPT_COMPLETION, frozenset({"prompt", "completion"})),
    (DataFormat.TEXT, frozenset({"text"})),
)


def detect_format(row: Row) -> DataFormat:
    """The format a row's columns announce. Raises InvalidData naming the columns found."""
    for fmt, columns in SIGNATURES:
        if columns <= row.values.keys():
            return fmt
    expected = "; ".join(f"{fmt.value}: {', '.join(sorted(cols))}" for fmt, cols in SIGNATURES)
    found = ", ".join(sorted(row.values)) or "none"
    raise InvalidData(f"{row.where}: cannot tell the format from the columns ({found}); expected {expected}")


def to_example(fmt: DataFormat, row: Row) -> Example:
    """Check a row against its format and convert it. Raises InvalidData saying where and what."""
    match fmt:
        case DataFormat.CHAT:
            return _chat(row)
        case DataFormat.INSTRUCTION:
            return _instruction(row)
        case DataFormat.PROMPT_COMPLETION:
            return Completion(_text(row, "prompt"), _text(row, "completion", allow_empty=False))
        case DataFormat.TEXT:
            return Text(_text(row, "text", allow_empty=False))
    raise InvalidData(f"{row.where}: format {fmt} must be resolved before rows are read")


def _chat(row: Row) -> Conversation:
    messages = row.values.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidData(f"{row.where}: messages must be a non-empty list of {{role, content}} objects")
    parsed: list[Message] = []
    for index, item in enumerate(messages):
        where = f"{row.where}: messages[{index}]"
        if not isinstance(item, dict):
            raise InvalidData(f"{where}: expected an object with role and content")
        role, content = item.get("role"), item.get("content")
        if role is None:
            raise InvalidData(f"{where}: missing role (one of {', '.join(ROLES)})")
        if role not in ROLES:
            raise InvalidData(f"{where}: unknown role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise InvalidData(f"{where}: content must be a string")
        if role == "assistant" and not content.strip():
            raise InvalidData(f"{where}: empty assistant turn")
        if role == "system" and index != 0:
            raise InvalidData(f"{where}: a system message may only come first")
        parsed.append(Message(role, content))
    if not any(m.role == "assistant" for m in parsed):
        raise InvalidData(f"{row.where}: no assistant turn to learn from")
    return Conversation(tuple(parsed))


def _instruction(row: Row) -> Conversation:
    instruction = _text(row, "instruction", allow_empty=False)
    extra = row.values.get("input")
    if extra is not None and not isinstance(extra, str):
        raise InvalidData(f"{row.where}: input must be a string")
    prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    output = _text(row, "output", allow_empty=False)
    return Conversation((Message("user", prompt), Message("assistant", output)))


def _text(row: Row, column: str, allow_empty: bool = True) -> str:
    value: Any = row.values.get(column)
    if value is None:
        raise InvalidData(f"{row.where}: missing {column}")
    if not isinstance(value, str):
        raise InvalidData(f"{row.where}: {column} must be a string, found {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise InvalidData(f"{row.where}: {column} is empty")
    return value
