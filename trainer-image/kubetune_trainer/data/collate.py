"""Batches for the model: padded, or packed into full sequences.

Padding is never trained on (its labels are ignored). Each batch also carries
`num_tokens`, its count of real tokens, for the tokens-per-second figure. Packed sequences carry position
ids that restart at every example and no attention mask, so models whose attention mask
is built by transformers' masking utilities (Llama, Phi-3, Mistral, Qwen2 and most
decoder models) attend only within each example.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kubetune_trainer.data.tokenize import IGNORE_INDEX, TokenizedExample


@dataclass(frozen=True)
class Packed:
    """Several examples laid end to end in one sequence."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]


def pack(examples: Sequence[TokenizedExample], max_length: int) -> list[Packed]:
    """First-fit-decreasing packing into sequences of at most max_length tokens.

    The first label of every example is ignored: it would be predicted from the end of
    the example before it.
    """
    bins: list[list[TokenizedExample]] = []
    room: list[int] = []
    for example in sorted(examples, key=lambda e: len(e.input_ids), reverse=True):
        size = len(example.input_ids)
        for index, free in enumerate(room):
            if size <= free:
                bins[index].append(example)
                room[index] -= size
                break
        else:
            bins.append([example])
            room.append(max_length - size)
    return [_lay_out(members) for members in bins]


def _lay_out(members: list[TokenizedExample]) -> Packed:
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for example in members:
        ids += example.input_ids
        labels += [IGNORE_INDEX, *example.labels[1:]]
        positions += list(range(len(example.input_ids)))
    return Packed(ids, labels, positions)


@dataclass(frozen=True)
class PaddingCollator:
    """Pads each batch to its longest example (rounded up to a multiple, for kernels)."""

    pad_token_id: int
    multiple_of: int = 8

    def __call__(self, batch: Sequence[TokenizedExample]) -> dict[str, torch.Tensor]:
        ids, labels, width = _padded(batch, self.pad_token_id, self.multiple_of)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, example in enumerate(batch):
            mask[row, : len(example.input_ids)] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask, "num_tokens": _count(batch)}


@dataclass(frozen=True)
class PackedCollator:
    """Stacks packed sequences; a short one is filled with a padding run that has its own
    positions (so it forms a separate, ignored 'example')."""

    pad_token_id: int
    multiple_of: int = 8

    def __call__(self, batch: Sequence[Packed]) -> dict[str, torch.Tensor]:
        ids, labels, width = _padded(batch, self.pad_token_id, self.multiple_of)
        positions = torch.zeros((len(batch), width), dtype=torch.long)
        for row, packed in enumerate(batch):
            n = len(packed.input_ids)
            positions[row, :n] = torch.tensor(packed.position_ids)
            positions[row, n:] = torch.arange(width - n)
        return {"input_ids": ids, "labels": labels, "position_ids": positions, "num_tokens": _count(batch)}


def _padded(
    batch: Sequence[TokenizedExample | Packed], pad_token_id: int, multiple_of: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Token ids and labels of a batch, right-padded; padding is never a target."""
    width = _round_up(max(len(item.input_ids) for item in batch), multiple_of)
    ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, item in enumerate(batch):
        n = len(item.input_ids)
        ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
    return ids, labels, width


def _count(batch: Sequence[TokenizedExample | Packed]) -> torch.Tensor:
    return torch.tensor(sum(len(item.input_ids) for item in batch))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
