from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetune.api import Truncation
from kubetune_trainer.data.formats import Completion, Conversation, Message, Text
from kubetune_trainer.data.tokenize import (
    DEFAULT_CHAT_TEMPLATE,
    IGNORE_INDEX,
    DataStats,
    ensure_chat_template,
    tokenize_example,
)


@pytest.fixture(scope="module")
def tokenizer(volumes: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(volumes / "models" / "tiny-phi3")


def _trained_text(tokenizer: Any, example: Any, **options: Any) -> str:
    settings = {"max_length": 256, "truncation": Truncation.TRUNCATE, "completion_only": True} | options
    result = tokenize_example(example, tokenizer, stats=DataStats(), **settings)
    assert result is not None
    return str(
        tokenizer.decode([t for t, label in zip(result.input_ids, result.labels, strict=True) if label != IGNORE_INDEX])
    )


CONVERSATION = Conversation(
    (
        Message("system", "Be brief."),
        Message("user", "Code for item 1?"),
        Message("assistant", "river"),
        Message("user", "And item 2?"),
        Message("assistant", "stone"),
    )
)


def test_only_assistant_turns_and_their_end_markers_are_trained(tokenizer: Any) -> None:
    assert _trained_text(tokenizer, CONVERSATION) == "river<|end|>\nstone<|end|>\n<|endoftext|>"


def test_whole_conversation_trains_when_completion_only_is_off(tokenizer: Any) -> None:
    text = _trained_text(tokenizer, CONVERSATION, completion_only=False)

    assert text.startswith("<|system|>\nBe brief.") and text.endswith("stone<|end|>\n<|endoftext|>")


def test_completion_trains_on_the_completion_and_the_end_token(tokenizer: Any) -> None:
    assert _trained_text(tokenizer, Completion("Code for item 1 is", " river.")) == " river.<|endoftext|>"


def test_text_trains_on_everything(tokenizer: Any) -> None:
    assert _trained_text(tokenizer, Text("the code word")) == "the code word<|endoftext|>"


def test_long_examples_are_truncated_or_dropped_and_counted(tokenizer: Any) -> None:
    stats = DataStats()
    long = Text("word " * 100)

    kept = tokenize_example(
        long, tokenizer, max_length=16, truncation=Truncation.TRUNCATE, completion_only=True, stats=stats
    )
    dropped = tokenize_example(
        long, tokenizer, max_length=16, truncation=Truncation.DROP, completion_only=True, stats=stats
    )

    assert kept is not None and len(kept.input_ids) == 16
    assert dropped is None
    assert (stats.examples, stats.kept, stats.truncated, stats.dropped_too_long) == (2, 1, 1, 1)


def test_truncation_that_cuts_every_answer_drops_the_example(tokenizer: Any) -> None:
    stats = DataStats()
    example = Completion("a long prompt " * 20, " answer")

    assert (
        tokenize_example(
            example, tokenizer, max_length=8, truncation=Truncation.TRUNCATE, completion_only=True, stats=stats
        )
        is None
    )
    assert stats.dropped_nothing_to_learn == 1


def test_tokenizer_without_a_template_gets_the_documented_default(tokenizer: Any) -> None:
    import copy

    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None

    assert ensure_chat_template(bare) is True
    assert bare.chat_template == DEFAULT_CHAT_TEMPLATE
    assert _trained_text(bare, CONVERSATION).startswith("river<|endoftext|>")
    assert ensure_chat_template(tokenizer) is False
