"""Dataset formats: recognise them, check each row, and turn rows into examples.

Five kinds of example come out, whatever the format went in:
- Conversation: chat and instruction rows, rendered later with the tokenizer's chat template;
- Completion: a prompt and a completion, trained on the completion (for seq2seq, a source
  and its target);
- Text: plain text, trained on all of it;
- LabelledText: a text (or a pair of texts) and its class;
- TaggedWords: words, each with its tag;
- TextPreference and ChatPreference: a prompt with a chosen and a rejected answer (dpo, orpo),
  as plain text or as chat messages rendered with the tokenizer's chat template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kubetune.api import DataFormat, TaskType
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


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: str | int
    """A class name, or its id."""
    text_pair: str | None = None
    """A second text classified together with the first (entailment, relevance, ...)."""
    where: str = field(default="", compare=False)


@dataclass(frozen=True)
class TaggedWords:
    tokens: tuple[str, ...]
    tags: tuple[str | int, ...]
    """One tag name (or id) per word."""
    where: str = field(default="", compare=False)


@dataclass(frozen=True)
class TextPreference:
    """A text prompt and two answers to continue it with, the first preferred."""

    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class ChatPreference:
    """A conversation so far and two ways the assistant could go on, the first preferred."""

    prompt: tuple[Message, ...]
    chosen: tuple[Message, ...]
    rejected: tuple[Message, ...]


Preference = TextPreference | ChatPreference
"""A pair of answers to one prompt, the chosen one preferred to the rejected one."""

Example = Conversation | Completion | Text | LabelledText | TaggedWords | TextPreference | ChatPreference
Generation = Conversation | Completion | Text
"""The examples a language model learns to continue."""

# The columns that identify each format. Auto-detection tries a task's formats in its order.
SIGNATURES: dict[DataFormat, frozenset[str]] = {
    DataFormat.CHAT: frozenset({"messages"}),
    DataFormat.INSTRUCTION: frozenset({"instruction", "output"}),
    DataFormat.PROMPT_COMPLETION: frozenset({"prompt", "completion"}),
    DataFormat.TEXT: frozenset({"text"}),
    DataFormat.TEXT_LABEL: frozenset({"text", "label"}),
    DataFormat.TOKENS_TAGS: frozenset({"tokens", "tags"}),
    DataFormat.SOURCE_TARGET: frozenset({"source", "target"}),
    # The column that makes a row a preference: one without its prompt or its rejected answer
    # is then told which column it lacks.
    DataFormat.PREFERENCE: frozenset({"chosen"}),
}


def detect_format(row: Row, formats: Sequence[DataFormat] = TaskType.CAUSAL_LM.formats) -> DataFormat:
    """The first of `formats` whose columns the row has. Raises InvalidData naming the columns found."""
    for fmt in formats:
        if SIGNATURES[fmt] <= row.values.keys():
            return fmt
    expected = "; ".join(f"{fmt.value}: {', '.join(sorted(SIGNATURES[fmt]))}" for fmt in formats)
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
        case DataFormat.TEXT_LABEL:
            return _text_label(row)
        case DataFormat.TOKENS_TAGS:
            return _tokens_tags(row)
        case DataFormat.SOURCE_TARGET:
            return Completion(_text(row, "source", allow_empty=False), _text(row, "target", allow_empty=False))
        case DataFormat.PREFERENCE:
            return _preference(row)
    raise InvalidData(f"{row.where}: format {fmt} must be resolved before rows are read")


def _chat(row: Row) -> Conversation:
    parsed = _messages(row, "messages")
    if not any(m.role == "assistant" for m in parsed):
        raise InvalidData(f"{row.where}: no assistant turn to learn from")
    return Conversation(parsed)


def _messages(row: Row, column: str, first: bool = True) -> tuple[Message, ...]:
    """A column's chat messages, checked; `first` when they begin the conversation (a system
    message may come only there)."""
    messages = row.values.get(column)
    if not isinstance(messages, list) or not messages:
        raise InvalidData(f"{row.where}: {column} must be a non-empty list of {{role, content}} objects")
    parsed: list[Message] = []
    for index, item in enumerate(messages):
        where = f"{row.where}: {column}[{index}]"
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
        if role == "system" and (index != 0 or not first):
            raise InvalidData(f"{where}: a system message may only come first")
        parsed.append(Message(role, content))
    return tuple(parsed)


def _preference(row: Row) -> TextPreference | ChatPreference:
    """A prompt and its chosen and rejected answers: all text, or (when any is a list of
    messages) a conversation, where a text prompt is the user's turn and a text answer the
    assistant's."""
    for column in ("prompt", "chosen", "rejected"):
        if row.values.get(column) is None:
            raise InvalidData(f"{row.where}: missing {column}; a preference row has prompt, chosen and rejected")
    pair: TextPreference | ChatPreference
    if not any(isinstance(row.values[column], list) for column in ("prompt", "chosen", "rejected")):
        pair = TextPreference(
            _text(row, "prompt"), _text(row, "chosen", allow_empty=False), _text(row, "rejected", allow_empty=False)
        )
    else:
        pair = ChatPreference(_turns(row, "prompt", "user"), _answer(row, "chosen"), _answer(row, "rejected"))
    if pair.chosen == pair.rejected:
        raise InvalidData(f"{row.where}: chosen and rejected are the same answer; a pair teaches only when they differ")
    return pair


def _turns(row: Row, column: str, role: str, first: bool = True) -> tuple[Message, ...]:
    """A column of messages, or of text standing for one message of `role`."""
    if isinstance(row.values[column], list):
        return _messages(row, column, first)
    return (Message(role, _text(row, column, allow_empty=role != "assistant")),)


def _answer(row: Row, column: str) -> tuple[Message, ...]:
    """An answer's messages: they go on the prompt's conversation and end with the assistant's turn."""
    turns = _turns(row, column, "assistant", first=False)
    last = turns[-1]
    if last.role != "assistant":
        raise InvalidData(f"{row.where}: {column} must end with an assistant message, not {last.role}")
    if not last.content.strip():
        raise InvalidData(f"{row.where}: {column} is empty")
    return turns


def _instruction(row: Row) -> Conversation:
    instruction = _text(row, "instruction", allow_empty=False)
    extra = row.values.get("input")
    if extra is not None and not isinstance(extra, str):
        raise InvalidData(f"{row.where}: input must be a string")
    prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    output = _text(row, "output", allow_empty=False)
    return Conversation((Message("user", prompt), Message("assistant", output)))


def _text_label(row: Row) -> LabelledText:
    pair = row.values.get("text_pair")
    if pair is not None and not isinstance(pair, str):
        raise InvalidData(f"{row.where}: text_pair must be a string")
    label = _label(row.values.get("label"), row.where)
    return LabelledText(_text(row, "text", allow_empty=False), label, pair, row.where)


def _tokens_tags(row: Row) -> TaggedWords:
    tokens, tags = _words(row, "tokens"), _words(row, "tags")
    if not tokens:
        raise InvalidData(f"{row.where}: tokens is empty")
    if len(tokens) != len(tags):
        raise InvalidData(f"{row.where}: {len(tokens)} tokens but {len(tags)} tags; give one tag per token")
    for index, token in enumerate(tokens):
        if not isinstance(token, str) or not token.strip():
            raise InvalidData(f"{row.where}: tokens[{index}] must be a non-empty string")
    where = row.where
    return TaggedWords(tuple(tokens), tuple(_label(tag, f"{where}: tags[{i}]") for i, tag in enumerate(tags)), where)


def _words(row: Row, column: str) -> list[Any]:
    """A list, or a string of whitespace-separated words (the form a CSV cell can hold)."""
    value = row.values.get(column)
    if value is None:
        raise InvalidData(f"{row.where}: missing {column}")
    if isinstance(value, str):
        return value.split()
    if not isinstance(value, list):
        raise InvalidData(f"{row.where}: {column} must be a list or a string of words separated by spaces")
    return value


def _label(value: Any, where: str) -> str | int:
    if value is None:
        raise InvalidData(f"{where}: missing label")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidData(f"{where}: a label is a name or a whole-number id, found {type(value).__name__}")
    if isinstance(value, int) and value < 0:
        raise InvalidData(f"{where}: label id {value} is negative")
    if isinstance(value, str) and not value.strip():
        raise InvalidData(f"{where}: label is empty")
    return value


def _text(row: Row, column: str, allow_empty: bool = True) -> str:
    value: Any = row.values.get(column)
    if value is None:
        raise InvalidData(f"{row.where}: missing {column}")
    if not isinstance(value, str):
        raise InvalidData(f"{row.where}: {column} must be a string, found {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise InvalidData(f"{row.where}: {column} is empty")
    return value
