"""Padding-free batches: each batch's examples end to end, each optimizer step laid out
again with less padding and no larger micro-batch, and the same gradients as padded batches."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from kubetune_trainer.data.collate import (
    EXAMPLES,
    PaddingCollator,
    PaddingFreeCollator,
    keeps_packed_examples_apart,
    lay_out_step,
)
from kubetune_trainer.data.tokenize import IGNORE_INDEX, TokenizedExample
from kubetune_trainer.tasks.causal_lm import PACKING_MODEL_TYPES


def _example(n: int, start: int = 10) -> TokenizedExample:
    ids = [start + i % 50 for i in range(n)]
    return TokenizedExample(ids, ids)


def test_rows_are_no_wider_than_the_longest_example() -> None:
    batch = PaddingFreeCollator(pad_token_id=0)([_example(30), _example(7), _example(9), _example(12)])

    # 30 rounds up to 32: the 30 alone, then 7 + 9 + 12 = 28 in a second row.
    assert batch["input_ids"].shape == (2, 32)
    assert "attention_mask" not in batch
    assert batch["num_tokens"].item() == 58
    assert len(batch[EXAMPLES]) == 4


def test_a_step_is_laid_out_in_fewer_micro_batches_with_the_last_one_real() -> None:
    collator = PaddingFreeCollator(pad_token_id=0, multiple_of=1)
    micro = [collator([_example(20), _example(4)]), collator([_example(6), _example(5)]), collator([_example(8)])]
    # Given: 2 rows of 20 (20 | 4), 2 of 6 (6 | 5), 1 of 8: 60 positions, the largest 40.

    laid_out = lay_out_step(micro, collator, rows_per_batch=2)

    assert len(laid_out) == 3
    assert [len(b) > 0 for b in laid_out] == [False, True, True]
    # Rows of the step's width: 20 | 8 + 6 + 5 | 4, longest first, two to a micro-batch.
    assert [b["input_ids"].shape for b in laid_out[1:]] == [(2, 20), (1, 4)]
    assert sum(b["num_tokens"].item() for b in laid_out[1:]) == 43
    assert all(EXAMPLES not in b for b in laid_out)


def test_no_micro_batch_laid_out_again_is_larger_than_the_largest_given() -> None:
    """Merging the step into one micro-batch of 3 rows would save more padding, but the
    forward pass over it would hold more activations than any the step was given."""
    collator = PaddingFreeCollator(pad_token_id=0, multiple_of=1)
    micro = [collator([_example(16), _example(2)]), collator([_example(14), _example(3)])]
    given = [b["input_ids"].numel() for b in micro]

    laid_out = lay_out_step(micro, collator, rows_per_batch=4)

    assert given == [32, 28]
    assert [b["input_ids"].shape for b in laid_out] == [(2, 16), (1, 3)]  # 16 | 14 + 2, then 3
    assert max(b["input_ids"].numel() for b in laid_out) <= max(given)


def test_a_step_that_saves_nothing_comes_back_as_it_was() -> None:
    collator = PaddingFreeCollator(pad_token_id=0, multiple_of=1)
    micro = [collator([_example(10)]), collator([_example(10)])]

    laid_out = lay_out_step(micro, collator, rows_per_batch=1)

    assert [b["input_ids"].shape for b in laid_out] == [(1, 10), (1, 10)]
    assert all(EXAMPLES not in b for b in laid_out)


def _tiny(model_type: str) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        model_type,
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        pad_token_id=0,
        initializer_range=0.2,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).train()


@pytest.mark.parametrize("model_type", sorted(PACKING_MODEL_TYPES))
def test_every_listed_architecture_keeps_packed_examples_apart(model_type: str) -> None:
    assert keeps_packed_examples_apart(_tiny(model_type))


class _IgnoresPositions(torch.nn.Module):
    """A model that drops the position ids, so its examples see each other."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        return self.inner(input_ids=input_ids, use_cache=False)


def test_a_model_that_attends_across_examples_is_found_out() -> None:
    assert not keeps_packed_examples_apart(_IgnoresPositions(_tiny("llama")))


def test_padding_free_steps_train_exactly_like_padded_ones() -> None:
    """The gradients of one optimizer step of three micro-batches, padded and laid out
    padding-free, are the same: same examples, same targets, same loss normalisation."""
    examples = [_example(n, 3 + n) for n in (21, 5, 13, 8, 3, 17)]
    micro = [examples[0:2], examples[2:4], examples[4:6]]

    def gradients(batches: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        model = _tiny("llama")
        targets = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches if b)
        for batch in batches:
            if batch:
                inputs = {k: v for k, v in batch.items() if k not in ("num_tokens", EXAMPLES)}
                model(**inputs, num_items_in_batch=targets, use_cache=False).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    padded = gradients([PaddingCollator(pad_token_id=0)(m) for m in micro])
    free = PaddingFreeCollator(pad_token_id=0)
    laid_out = lay_out_step([free(m) for m in micro], free, rows_per_batch=2)
    assert sum(1 for b in laid_out if b) < len(micro)
    padding_free = gradients(laid_out)

    assert padded.keys() == padding_free.keys()
    for name, grad in padded.items():
        torch.testing.assert_close(padding_free[name], grad, atol=1e-5, rtol=1e-4, msg=name)
