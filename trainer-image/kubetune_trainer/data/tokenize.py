"""Examples to token ids and labels: the chat template applied, loss only where it belongs.

Every example becomes text segments, each trainable or not; the text is tokenised
once with character offsets, and a token is trained on when it lies inside a
trainable segment. Assistant turns are located by rendering the conversation up to
each turn with the tokenizer's own template, so any template that renders a longer
conversation as an extension of a shorter one works.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kubetune.api import Truncation
from kubetune.contract import DataSummary
from kubetune_trainer.data.formats import Completion, Conversation, Generation, Text
from kubetune_trainer.errors import InvalidSpec

IGNORE_INDEX = -100

# For tokenizers that come without a chat template. Each turn ends with the end-of-sequence
# token, so the tuned model stops after its answer.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Segment:
    text: str
    trainable: bool


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids and a label per token (IGNORE_INDEX where nothing is learnt). For seq2seq the
    labels are the target's own tokens, of their own length."""

    input_ids: list[int]
    labels: list[int]


@dataclass(frozen=True)
class ClassifiedExample:
    """Token ids of a text (or a pair of texts) and the id of its class."""

    input_ids: list[int]
    label: int
    token_type_ids: list[int] | None = None
    """Which text of a pair each token belongs to, for models that tell them apart (BERT)."""


@dataclass
class DataStats:
    """What happened to the examples on their way to the model; reported in the summary."""

    examples: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_nothing_to_learn: int = 0
    tokens: int = 0
    trainable_tokens: int = 0
    longest: int = 0
    detected_format: str = ""

    def keep(self, tokens: int, trainable: int) -> None:
        """Count an example that goes to training, with its tokens and those it learns from."""
        self.kept += 1
        self.tokens += tokens
        self.trainable_tokens += trainable

    def summary(self, **added: Any) -> DataSummary:
        """The statistics as the run summary carries them, with what the run adds (`added`:
        DataSummary's other fields, such as default_chat_template)."""
        return DataSummary(
            examples=self.examples,
            kept=self.kept,
            truncated=self.truncated,
            dropped_too_long=self.dropped_too_long,
            dropped_nothing_to_learn=self.dropped_nothing_to_learn,
            tokens=self.tokens,
            trainable_tokens=self.trainable_tokens,
            longest=self.longest,
            format=self.detected_format,
            **added,
        )


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give a tokenizer without a chat template the documented default. True if it was needed."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return True


def segments(example: Generation, tokenizer: Any, completion_only: bool) -> list[Segment]:
    match example:
        case Conversation():
            parts = _conversation_segments(example, tokenizer)
        case Completion():
            parts = [Segment(example.prompt, False), Segment(example.completion, True)]
        case Text():
            parts = [Segment(example.text, True)]
    if not completion_only:
        parts = [Segment(part.text, True) for part in parts]
    return parts


def render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    """Messages as the tokenizer's chat template writes them."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return str(text)


def _conversation_segments(conversation: Conversation, tokenizer: Any) -> list[Segment]:
    messages = [{"role": m.role, "content": m.content} for m in conversation.messages]
    full = render(tokenizer, messages, generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = render(tokenizer, messages[:index], generation_prompt=True) if index else ""
        through = render(tokenizer, messages[: index + 1], generation_prompt=False)
        # A template may close a conversation differently from a turn (Phi-3 adds the
        # end-of-text token), so the turn ends where this rendering and the full one part.
        end = _common_prefix_length(through, full)
        if not full.startswith(prefix) or end <= len(prefix):
            raise InvalidSpec(
                "the model's chat template renders a conversation differently from its beginning, so "
                "assistant turns cannot be located; set dataset.completionOnlyLoss: false or give the "
                "tokenizer a template that extends conversations turn by turn"
            )
        spans.append((len(prefix), end))

    out: list[Segment] = []
    cursor = 0
    for start, end in spans:
        if start > cursor:
            out.append(Segment(full[cursor:start], False))
        out.append(Segment(full[start:end], True))
        cursor = end
    if cursor < len(full):
        out.append(Segment(full[cursor:], False))
    return out


def tokenize_example(
    example: Generation,
    tokenizer: Any,
    *,
    max_length: int,
    truncation: Truncation,
    completion_only: bool,
    stats: DataStats,
) -> TokenizedExample | None:
    """Token ids and labels of one example, or None when it is dropped (and counted)."""
    parts = segments(example, tokenizer, completion_only)
    return tokenize_segments(
        parts,
        tokenizer,
        rendered=isinstance(example, Conversation),
        max_length=max_length,
        truncation=truncation,
        stats=stats,
    )


def tokenize_segments(
    parts: list[Segment], tokenizer: Any, *, rendered: bool, max_length: int, truncation: Truncation, stats: DataStats
) -> TokenizedExample | None:
    """Token ids and labels of text segments, or None when they are dropped (and counted).
    `rendered`: the text came from the chat template, which placed the special tokens itself;
    otherwise the tokenizer adds its own and the end-of-sequence token closes the text."""
    stats.examples += 1
    text = "".join(part.text for part in parts)
    encoded = tokenizer(text, add_special_tokens=not rendered, return_offsets_mapping=True)
    ids: list[int] = list(encoded["input_ids"])
    trainable = _trainable_mask(parts, encoded["offset_mapping"])
    if not rendered and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
        trainable.append(True)
    stats.longest = max(stats.longest, len(ids))
    if len(ids) > max_length:
        if truncation is Truncation.DROP:
            stats.dropped_too_long += 1
            return None
        stats.truncated += 1
        ids, trainable = ids[:max_length], trainable[:max_length]
    if not any(trainable):
        stats.dropped_nothing_to_learn += 1
        return None
    labels = [token if train else IGNORE_INDEX for token, train in zip(ids, trainable, strict=True)]
    stats.kept += 1
    stats.tokens += len(ids)
    stats.trainable_tokens += sum(trainable)
    return TokenizedExample(ids, labels)


def length_limit(max_seq_length: int, tokenizer: Any) -> int:
    """maxSeqLength, or less where the model has fewer positions (BERT-like encoders: 512);
    tokenizers that know no limit say so with a huge number."""
    known = getattr(tokenizer, "model_max_length", None)
    return min(max_seq_length, known) if isinstance(known, int) and known < 1_000_000 else max_seq_length


def truncating(truncate: bool, max_length: int) -> dict[str, Any]:
    """Tokenizer settings that truncate to max_length, or that never truncate."""
    return {"truncation": True, "max_length": max_length} if truncate else {"truncation": False}


def fit(encode: Callable[[bool], Any], max_length: int, truncation: Truncation, stats: DataStats) -> Any | None:
    """Encode an example whole (`encode(False)`); when it is longer than max_length, drop it or
    encode it again truncated (`encode(True)`: the tokenizer keeps its special tokens), and
    count either. The length is the longer of input_ids and labels (a seq2seq target)."""
    stats.examples += 1
    encoded = encode(False)
    length = max(len(encoded["input_ids"]), len(encoded.get("labels") or []))
    stats.longest = max(stats.longest, length)
    if length <= max_length:
        return encoded
    if truncation is Truncation.DROP:
        stats.dropped_too_long += 1
        return None
    stats.truncated += 1
    return encode(True)


def _common_prefix_length(a: str, b: str) -> int:
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return min(len(a), len(b))


def _trainable_mask(parts: list[Segment], offsets: Iterable[tuple[int, int]]) -> list[bool]:
    spans: list[tuple[int, int]] = []
    cursor = 0
    for part in parts:
        if part.trainable:
            spans.append((cursor, cursor + len(part.text)))
        cursor += len(part.text)
    # A token counts only when it lies wholly inside a trainable span: where a span ends
    # inside a token (templates can share characters across turns), that token is context.
    return [end > start and any(lo <= start and end <= hi for lo, hi in spans) for start, end in offsets]
