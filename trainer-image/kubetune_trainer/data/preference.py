"""Preference pairs (dpo, orpo) on their way to the model: each answer tokenised after its
prompt with loss only on the answer, and a batch's answers laid end to end without padding,
each token tagged with the answer it belongs to so the loss can sum an answer's
log-probabilities.

A batch of n pairs holds 2n sequences: the chosen answers first, then the rejected ones in the
same order, so sequence i and i + n are the two answers of pair i.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kubetune.api import Truncation
from kubetune_trainer.data.formats import ChatPreference, Message, TextPreference
from kubetune_trainer.data.tokenize import (
    IGNORE_INDEX,
    DataStats,
    Segment,
    TokenizedExample,
    render,
    tokenize_segments,
)
from kubetune_trainer.errors import InvalidSpec

SEQUENCE_IDS = "sequence_ids"
"""The key of the tensor that says which sequence of the batch each token belongs to (-1: padding)."""


@dataclass(frozen=True)
class EncodedPair:
    """Token ids and labels of a prompt followed by its chosen answer, and by its rejected one."""

    chosen_ids: list[int]
    chosen_labels: list[int]
    rejected_ids: list[int]
    rejected_labels: list[int]

    @property
    def chosen(self) -> TokenizedExample:
        return TokenizedExample(self.chosen_ids, self.chosen_labels)

    @property
    def rejected(self) -> TokenizedExample:
        return TokenizedExample(self.rejected_ids, self.rejected_labels)


def answer_segments(
    prompt: str | tuple[Message, ...], answer: str | tuple[Message, ...], tokenizer: Any
) -> list[Segment]:
    """The prompt (not trained on) and the answer (trained on) as text: plain, or rendered with the
    chat template, where the answer is what the template adds to the prompt's conversation."""
    if isinstance(prompt, str) and isinstance(answer, str):
        return [Segment(prompt, False), Segment(answer, True)]
    assert isinstance(prompt, tuple) and isinstance(answer, tuple), "a chat pair's parts are all messages"
    messages = [{"role": m.role, "content": m.content} for m in (*prompt, *answer)]
    prefix = render(tokenizer, messages[: len(prompt)], generation_prompt=True)
    full = render(tokenizer, messages, generation_prompt=False)
    if not full.startswith(prefix) or len(full) == len(prefix):
        raise InvalidSpec(
            "the model's chat template does not render a conversation as an extension of its prompt, so "
            "the answers of preference pairs cannot be located; give the tokenizer a template that does"
        )
    return [Segment(prefix, False), Segment(full[len(prefix) :], True)]


def encode_pair(
    pair: TextPreference | ChatPreference, tokenizer: Any, *, max_length: int, truncation: Truncation, stats: DataStats
) -> EncodedPair | None:
    """Both answers of a pair encoded after its prompt, or None when the pair is dropped (and
    counted once: too long, or nothing left to learn after truncation)."""
    sides = DataStats()
    chat = isinstance(pair, ChatPreference)
    encoded = [
        tokenize_segments(
            answer_segments(pair.prompt, answer, tokenizer),
            tokenizer,
            rendered=chat,
            max_length=max_length,
            truncation=truncation,
            stats=sides,
        )
        for answer in (pair.chosen, pair.rejected)
    ]
    stats.examples += 1
    stats.longest = max(stats.longest, sides.longest)
    chosen, rejected = encoded
    if chosen is None or rejected is None:
        if sides.dropped_too_long:
            stats.dropped_too_long += 1
        else:
            stats.dropped_nothing_to_learn += 1
        return None
    stats.truncated += 1 if sides.truncated else 0
    stats.keep(
        len(chosen.input_ids) + len(rejected.input_ids),
        sum(label != IGNORE_INDEX for label in chosen.labels + rejected.labels),
    )
    return EncodedPair(chosen.input_ids, chosen.labels, rejected.input_ids, rejected.labels)


@dataclass(frozen=True)
class PairCollator:
    """A batch of pairs as 2n sequences (chosen answers, then rejected ones), laid end to end in
    rows as wide as the longest (`together`: the model keeps the examples of a row apart), or
    one to a padded row with an attention mask."""

    pad_token_id: int
    together: bool = True
    multiple_of: int = 8

    def __call__(self, batch: Sequence[EncodedPair]) -> dict[str, torch.Tensor]:
        sequences = [pair.chosen for pair in batch] + [pair.rejected for pair in batch]
        return lay_out(sequences, self.pad_token_id, self.together, self.multiple_of)


def lay_out(
    sequences: Sequence[TokenizedExample], pad_token_id: int, together: bool, multiple_of: int = 8
) -> dict[str, torch.Tensor]:
    """Token ids, labels, position ids and sequence ids of `sequences` in rows. A sequence's
    first label is ignored: it would be predicted from the end of the sequence before it."""
    width = -(-max(len(s.input_ids) for s in sequences) // multiple_of) * multiple_of
    rows = _rows([len(s.input_ids) for s in sequences], width) if together else [[i] for i in range(len(sequences))]
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    owners = torch.full((len(rows), width), -1, dtype=torch.long)
    for row, members in enumerate(rows):
        cursor = 0
        for index in members:
            sequence, end = sequences[index], cursor + len(sequences[index].input_ids)
            ids[row, cursor:end] = torch.tensor(sequence.input_ids)
            labels[row, cursor:end] = torch.tensor([IGNORE_INDEX, *sequence.labels[1:]])
            positions[row, cursor:end] = torch.arange(end - cursor)
            owners[row, cursor:end] = index
            cursor = end
        # The padding run has positions of its own, so it forms a separate (ignored) example.
        positions[row, cursor:] = torch.arange(width - cursor)
    out = {
        "input_ids": ids,
        "labels": labels,
        "position_ids": positions,
        SEQUENCE_IDS: owners,
        "num_tokens": torch.tensor(sum(len(s.input_ids) for s in sequences)),
    }
    if not together:
        out["attention_mask"] = (owners >= 0).long()
    return out


def _rows(lengths: list[int], width: int) -> list[list[int]]:
    """First-fit-decreasing: the indices of the sequences in each row of `width` tokens."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True):
        for row, free in enumerate(room):
            if lengths[index] <= free:
                rows[row].append(index)
                room[row] -= lengths[index]
                break
        else:
            rows.append([index])
            room.append(width - lengths[index])
    return rows
