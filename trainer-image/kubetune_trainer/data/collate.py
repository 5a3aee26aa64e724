"""Batches for the model: padded, laid end to end without padding, or packed into full
sequences; one label per text for classification; a source and a target of their own
lengths for seq2seq.

Padding is never trained on (its labels are ignored). Each batch also carries
`num_tokens`, its count of real tokens, for the tokens-per-second figure. Packed sequences carry position
ids that restart at every example and no attention mask, so models whose attention mask
is built by transformers' masking utilities (Llama, Phi-3, Mistral, Qwen2 and most
decoder models) attend only within each example; `keeps_packed_examples_apart` checks
that a loaded model does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kubetune_trainer.data.tokenize import IGNORE_INDEX, ClassifiedExample, TokenizedExample


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
        return {"input_ids": ids, "labels": labels, "attention_mask": _mask(batch, width), "num_tokens": _count(batch)}


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


EXAMPLES = "examples"
"""The key under which a padding-free batch carries its examples, for the Trainer to lay a
whole optimizer step out again (it is never given to the model)."""


@dataclass(frozen=True)
class PaddingFreeCollator:
    """The examples of a batch laid end to end in rows as wide as its longest example: the same
    examples and targets as a padded batch, in fewer rows, with no compute on padding. No row
    is wider than the padded batch would be, so neither is the attention over it."""

    pad_token_id: int
    multiple_of: int = 8

    def rows(self, examples: Sequence[TokenizedExample]) -> list[Packed]:
        return pack(examples, _round_up(max(len(e.input_ids) for e in examples), self.multiple_of))

    def width(self, rows: Sequence[Packed]) -> int:
        """The width `collate_rows` gives these rows."""
        return _round_up(max(len(row.input_ids) for row in rows), self.multiple_of)

    def collate_rows(self, rows: Sequence[Packed]) -> dict[str, torch.Tensor]:
        return PackedCollator(self.pad_token_id, self.multiple_of)(rows)

    def __call__(self, batch: Sequence[TokenizedExample]) -> dict[str, Any]:
        return self.collate_rows(self.rows(batch)) | {EXAMPLES: list(batch)}


def lay_out_step(
    batches: Sequence[dict[str, Any]], collator: PaddingFreeCollator, rows_per_batch: int
) -> list[dict[str, Any]]:
    """One optimizer step's micro-batches again, with the step's examples laid end to end
    together in rows as wide as its longest example, and the rows (longest first) in
    micro-batches of at most `rows_per_batch` rows, none larger (rows x width) than the
    largest micro-batch given: less padding than each micro-batch laid out alone, often in
    fewer micro-batches, and never a larger forward pass than the step would have made, so
    never more activation memory. The step keeps its number of micro-batches (the Trainer
    counts them): empty ones (`{}`) come first, to be skipped, and the last is always real,
    so data-parallel ranks synchronise on it. When laying out again saves no position, the
    batches come back as they were (without their examples)."""
    examples = [example for batch in batches for example in batch.get(EXAMPLES, [])]
    stripped = [{k: v for k, v in batch.items() if k != EXAMPLES} for batch in batches]
    if not examples:
        return stripped
    sizes = [batch["input_ids"].numel() for batch in stripped]
    largest = max(sizes)
    rows = sorted(collator.rows(examples), key=lambda row: len(row.input_ids), reverse=True)
    groups: list[list[Packed]] = []
    for row in rows:
        # Sorted longest first, a micro-batch is as wide as its first row.
        group = groups[-1] if groups else None
        if group is not None and len(group) < rows_per_batch and (len(group) + 1) * collator.width(group) <= largest:
            group.append(row)
        else:
            groups.append([row])
    if len(groups) > len(batches) or sum(len(g) * collator.width(g) for g in groups) >= sum(sizes):
        return stripped
    return [{} for _ in range(len(batches) - len(groups))] + [collator.collate_rows(group) for group in groups]


PROBE_TOLERANCE = 0.02
"""How far, relative to the largest logit, an example's logits may move when another example
is laid before it: rounding, not attention across examples (which moves them by far more)."""


def keeps_packed_examples_apart(model: Any) -> bool:
    """Whether this model, as loaded, attends only within each example of a packed row: two
    short examples are run packed and the second alone, in evaluation mode (no dropout), and
    their logits compared."""
    device = next(model.parameters()).device
    first, second = list(range(3, 9)), list(range(9, 14))
    packed_ids = torch.tensor([first + second], device=device)
    positions = torch.tensor([list(range(len(first))) + list(range(len(second)))], device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            packed = model(input_ids=packed_ids, position_ids=positions, use_cache=False).logits[0, len(first) :]
            alone = model(input_ids=torch.tensor([second], device=device), use_cache=False).logits[0]
    finally:
        model.train(was_training)
    packed, alone = packed.float(), alone.float()
    return bool((packed - alone).abs().max() <= PROBE_TOLERANCE * alone.abs().max().clamp(min=1e-6))


@dataclass(frozen=True)
class ClassificationCollator:
    """Padded texts with an attention mask, and one class id per text."""

    pad_token_id: int
    multiple_of: int = 8

    def __call__(self, batch: Sequence[ClassifiedExample]) -> dict[str, torch.Tensor]:
        width = _round_up(max(len(item.input_ids) for item in batch), self.multiple_of)
        out = {
            "input_ids": _pad([item.input_ids for item in batch], self.pad_token_id, width),
            "attention_mask": _mask(batch, width),
            "labels": torch.tensor([item.label for item in batch], dtype=torch.long),
            "num_tokens": _count(batch),
        }
        if all(item.token_type_ids is not None for item in batch):
            out["token_type_ids"] = _pad([item.token_type_ids or [] for item in batch], 0, width)
        return out


@dataclass(frozen=True)
class Seq2SeqCollator:
    """Sources padded for the encoder, targets padded (and ignored there) as labels; the
    model makes its decoder inputs from the labels, shifted right."""

    pad_token_id: int
    multiple_of: int = 8

    def __call__(self, batch: Sequence[TokenizedExample]) -> dict[str, torch.Tensor]:
        source = _round_up(max(len(item.input_ids) for item in batch), self.multiple_of)
        target = _round_up(max(len(item.labels) for item in batch), self.multiple_of)
        return {
            "input_ids": _pad([item.input_ids for item in batch], self.pad_token_id, source),
            "attention_mask": _mask(batch, source),
            "labels": _pad([item.labels for item in batch], IGNORE_INDEX, target),
            "num_tokens": torch.tensor(sum(len(item.input_ids) + len(item.labels) for item in batch)),
        }


def _padded(
    batch: Sequence[TokenizedExample | Packed], pad_token_id: int, multiple_of: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Token ids and labels of a batch, right-padded; padding is never a target."""
    width = _round_up(max(len(item.input_ids) for item in batch), multiple_of)
    ids = _pad([item.input_ids for item in batch], pad_token_id, width)
    labels = _pad([item.labels for item in batch], IGNORE_INDEX, width)
    return ids, labels, width


def _pad(rows: Sequence[Sequence[int]], value: int, width: int) -> torch.Tensor:
    """Rows right-padded with `value` to `width` columns."""
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for index, row in enumerate(rows):
        out[index, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def _mask(batch: Sequence[TokenizedExample | ClassifiedExample], width: int) -> torch.Tensor:
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, item in enumerate(batch):
        mask[row, : len(item.input_ids)] = 1
    return mask


def _count(batch: Sequence[TokenizedExample | Packed | ClassifiedExample]) -> torch.Tensor:
    return torch.tensor(sum(len(item.input_ids) for item in batch))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
