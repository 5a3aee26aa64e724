from __future__ import annotations

from pathlib import Path

from kubetune_trainer.data.collate import (
    ClassificationCollator,
    PackedCollator,
    PaddingCollator,
    Seq2SeqCollator,
    pack,
)
from kubetune_trainer.data.tokenize import IGNORE_INDEX, ClassifiedExample, TokenizedExample


def _example(n: int, start: int = 10) -> TokenizedExample:
    ids = list(range(start, start + n))
    return TokenizedExample(ids, ids)


def test_packing_fills_sequences_and_restarts_positions() -> None:
    packed = pack([_example(5), _example(3, 100), _example(4, 200), _example(6, 300)], max_length=10)

    assert sorted(len(p.input_ids) for p in packed) == [8, 10]
    for sequence in packed:
        assert len(sequence.input_ids) <= 10
        starts = [i for i, position in enumerate(sequence.position_ids) if position == 0]
        # The first token of every example is never a training target.
        assert all(sequence.labels[i] == IGNORE_INDEX for i in starts)


def test_packing_keeps_every_token() -> None:
    examples = [_example(n, 10 * n) for n in (7, 2, 9, 4, 4, 1)]

    packed = pack(examples, max_length=12)

    assert sorted(t for p in packed for t in p.input_ids) == sorted(t for e in examples for t in e.input_ids)


def test_padding_is_never_a_target_and_is_counted_out() -> None:
    batch = PaddingCollator(pad_token_id=0)([_example(3), _example(5)])

    assert batch["input_ids"].shape == (2, 8)
    assert (batch["labels"][0, 3:] == IGNORE_INDEX).all()
    assert batch["attention_mask"].sum().item() == 8
    assert batch["num_tokens"].item() == 8


def test_packed_batches_carry_positions_and_no_attention_mask() -> None:
    packed = pack([_example(3), _example(2)], max_length=16)
    batch = PackedCollator(pad_token_id=0)(packed)

    assert "attention_mask" not in batch
    assert batch["position_ids"][0, :5].tolist() == [0, 1, 2, 0, 1]
    assert batch["position_ids"][0, 5:8].tolist() == [0, 1, 2]
    assert batch["num_tokens"].item() == 5


def test_packed_examples_do_not_attend_to_each_other(volumes: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(volumes / "models" / "tiny-phi3", attn_implementation="sdpa").eval()
    first, second = _example(6, 20), _example(5, 60)
    batch = PackedCollator(pad_token_id=0, multiple_of=1)(pack([first, second], max_length=11))
    with torch.no_grad():
        packed_logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        alone = model(input_ids=torch.tensor([second.input_ids]), use_cache=False).logits

    # pack() lays the longer example first, so the second one occupies positions 6..10.
    assert torch.allclose(packed_logits[0, 6:11], alone[0], atol=1e-4)


def test_classification_batches_carry_one_label_per_text_and_the_pair_segments() -> None:
    batch = ClassificationCollator(pad_token_id=0, multiple_of=4)(
        [ClassifiedExample([5, 6, 7], 2, [0, 0, 1]), ClassifiedExample([5, 6, 7, 8, 9], 0, [0, 0, 0, 1, 1])]
    )

    assert batch["labels"].tolist() == [2, 0]
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0, 0, 0, 0, 0], [5, 6, 7, 8, 9, 0, 0, 0]]
    assert batch["attention_mask"].sum(dim=1).tolist() == [3, 5]
    assert batch["token_type_ids"][1].tolist() == [0, 0, 0, 1, 1, 0, 0, 0]
    assert batch["num_tokens"].item() == 8


def test_seq2seq_batches_pad_sources_and_targets_apart() -> None:
    batch = Seq2SeqCollator(pad_token_id=0, multiple_of=1)(
        [TokenizedExample([4, 5, 6], [7, 1]), TokenizedExample([4], [7, 8, 9, 1])]
    )

    assert batch["input_ids"].tolist() == [[4, 5, 6], [4, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[7, 1, IGNORE_INDEX, IGNORE_INDEX], [7, 8, 9, 1]]
    assert batch["num_tokens"].item() == 10
