"""The loss without full-vocabulary logits: the same loss and gradients as the plain path, in
less memory, and the plain path wherever the chunked one cannot reproduce the model's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForSequenceClassification
from transformers.loss.loss_utils import ForCausalLMLoss

from kubetune_trainer.loss import (
    HEAD_THEN_LOSS_MODEL_TYPES,
    causal_lm_loss,
    chunk_rows,
    linear_cross_entropy,
    loss_without_logits,
    plain_path_reason,
)

Grads = dict[str, torch.Tensor]


def _close(actual: Grads, expected: Grads, relative: float) -> None:
    assert actual.keys() == expected.keys() and expected
    for name, grad in expected.items():
        error = float((actual[name].float() - grad.float()).norm() / grad.float().norm())
        assert error <= relative, f"{name}: relative error {error:.2e}"


def _tolerance(autocast: bool) -> float:
    # bf16 rounds to 3 significant digits, and over a bf16 base every activation is rounded:
    # the plain path is as far from fp32 (test below).
    return 3e-2 if autocast else 1e-5


def _head_step(
    chunked: bool, head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int, autocast: bool
) -> tuple[torch.Tensor, Grads]:
    rows = hidden.detach().clone().requires_grad_(True)
    head.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        if chunked:
            loss = linear_cross_entropy(rows, head, targets, chunk)
        else:
            loss = nn.functional.cross_entropy(head(rows).float(), targets, reduction="sum")
    loss.backward()
    grads = {"hidden": rows.grad} | {n: p.grad.clone() for n, p in head.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("chunk", [8, 7, 1000], ids=["divides", "does-not-divide", "one-chunk"])
def test_a_plain_head_gives_the_plain_loss_and_gradients(chunk: int, autocast: bool) -> None:
    torch.manual_seed(0)
    head = nn.Linear(32, 500, bias=False)
    hidden, targets = torch.randn(24, 32), torch.randint(0, 500, (24,))

    expected_loss, expected = _head_step(False, head, hidden, targets, chunk, autocast)
    loss, grads = _head_step(True, head, hidden, targets, chunk, autocast)

    torch.testing.assert_close(loss, expected_loss, rtol=1e-3 if autocast else 1e-6, atol=0)
    assert grads["weight"].dtype == head.weight.dtype
    _close(grads, expected, _tolerance(autocast))


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_a_lora_head_is_called_per_chunk_with_the_plain_gradients(autocast: bool) -> None:
    """An adapter on the head (peft's LoRA layer, not a bare Linear) goes through the
    recomputing path: its adapter weights get the plain path's gradients."""
    torch.manual_seed(0)
    holder = nn.Sequential(nn.Linear(32, 500, bias=False))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["0"], init_lora_weights=False)
    head = get_peft_model(holder, config).base_model.model[0]
    assert type(head) is not nn.Linear
    hidden, targets = torch.randn(24, 32), torch.randint(0, 500, (24,))

    expected_loss, expected = _head_step(False, head, hidden, targets, 7, autocast)
    loss, grads = _head_step(True, head, hidden, targets, 7, autocast)

    assert any("lora_A" in name for name in grads)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-3 if autocast else 1e-6, atol=0)
    _close(grads, expected, _tolerance(autocast))


def test_bf16_gradients_are_as_near_fp32_as_the_plain_paths() -> None:
    """The bf16 tolerance above is bf16's own: against fp32 gradients, the chunked path's
    bf16 gradients are no further off than the plain path's (within a quarter)."""
    torch.manual_seed(0)
    head = nn.Linear(32, 500, bias=False)
    hidden, targets = torch.randn(64, 32), torch.randint(0, 500, (64,))
    _, exact = _head_step(False, head, hidden, targets, 16, autocast=False)
    _, plain = _head_step(False, head, hidden, targets, 16, autocast=True)
    _, chunked = _head_step(True, head, hidden, targets, 16, autocast=True)
    for name, grad in exact.items():
        plain_error = float((plain[name] - grad).norm() / grad.norm())
        chunked_error = float((chunked[name] - grad).norm() / grad.norm())
        assert chunked_error <= 1.25 * plain_error + 1e-6, name


def test_the_loss_is_normalised_as_transformers_normalises_it() -> None:
    """Ignored labels, the shift to next-token targets, and the step's target count from the
    Trainer (num_items_in_batch) or else this batch's mean: transformers' ForCausalLMLoss."""
    torch.manual_seed(0)
    head = nn.Linear(16, 50, bias=False)
    hidden = torch.randn(2, 9, 16)
    labels = torch.randint(0, 50, (2, 9))
    labels[0, :4] = -100  # a prompt without loss
    labels[1, 6:] = -100  # padding
    logits = head(hidden)
    for items in (None, torch.tensor(23), 23):
        expected = ForCausalLMLoss(logits, labels, 50, num_items_in_batch=items)
        torch.testing.assert_close(causal_lm_loss(hidden, head, labels, items, chunk=5), expected)
    shifted = torch.randint(0, 50, (2, 9))
    expected = ForCausalLMLoss(logits, None, 50, num_items_in_batch=11, shift_labels=shifted)
    torch.testing.assert_close(causal_lm_loss(hidden, head, None, 11, shift_labels=shifted, chunk=4), expected)


def _tiny(
    model_type: str, vocab: int = 300, hidden: int = 32, layers: int = 2, tied: bool = False, attention: str = "sdpa"
) -> Any:
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        model_type,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        tie_word_embeddings=tied,
        pad_token_id=0,
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation=attention).train()


def _packed_batch(vocab: int) -> dict[str, torch.Tensor]:
    """Two rows of examples laid end to end (position ids restart per example), part of the
    labels ignored: the padding-free batches the trainer makes."""
    ids = torch.randint(1, vocab, (2, 19))
    labels = ids.clone()
    labels[0, :3] = -100  # a prompt
    labels[0, 11] = -100  # the first label of the second example
    labels[1, 15:] = -100  # padding
    positions = torch.cat([torch.arange(11), torch.arange(8)]).repeat(2, 1)
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def _model_step(model: Any, batch: dict[str, torch.Tensor], chunked: bool, autocast: bool) -> tuple[Any, Grads]:
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        if chunked:
            with loss_without_logits(model, chunk=7) as used:
                assert used
                loss = model(**batch, num_items_in_batch=torch.tensor(40)).loss
        else:
            loss = model(**batch, num_items_in_batch=torch.tensor(40)).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model_type", sorted(HEAD_THEN_LOSS_MODEL_TYPES))
def test_every_model_type_taken_gives_its_own_forwards_loss(model_type: str) -> None:
    """The list of model types whose forward hands the head's output straight to the loss,
    checked: a padding-free batch's loss and every gradient equal the model's own forward."""
    model = _tiny(model_type)
    batch = _packed_batch(300)
    expected_loss, expected = _model_step(model, batch, chunked=False, autocast=False)
    loss, grads = _model_step(model, batch, chunked=True, autocast=False)
    torch.testing.assert_close(loss, expected_loss)
    _close(grads, expected, 1e-5)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_lora_and_full_models_train_the_same_through_the_chunked_head(autocast: bool, tied: bool) -> None:
    model = _tiny("llama", tied=tied)
    batch = _packed_batch(300)
    expected_loss, expected = _model_step(model, batch, chunked=False, autocast=autocast)
    loss, grads = _model_step(model, batch, chunked=True, autocast=autocast)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-3 if autocast else 1e-6, atol=0)
    _close(grads, expected, _tolerance(autocast))

    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    adapted = get_peft_model(model.to(torch.bfloat16) if autocast else model, lora).train()
    expected_loss, expected = _model_step(adapted, batch, chunked=False, autocast=autocast)
    loss, grads = _model_step(adapted, batch, chunked=True, autocast=autocast)
    assert all("lora_" in name for name in grads)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-3 if autocast else 1e-6, atol=0)
    _close(grads, expected, _tolerance(autocast))


def test_the_model_is_given_back_as_it_was() -> None:
    model = _tiny("llama")
    head = model.get_output_embeddings()
    with loss_without_logits(model):
        assert model.get_output_embeddings() is not head
    assert model.get_output_embeddings() is head
    assert "_loss_function" not in vars(model)
    batch = _packed_batch(300)
    assert model(**batch).logits.shape == (2, 19, 300)


def test_models_whose_logits_change_before_the_loss_keep_the_plain_path() -> None:
    gemma = _tiny("gemma2", attention="eager")  # tanh-caps its logits between head and loss
    assert gemma.config.final_logit_softcapping
    assert "not one checked" in str(plain_path_reason(gemma))
    with loss_without_logits(gemma) as used:
        assert not used
        assert type(gemma.get_output_embeddings()) is nn.Linear

    classifier = LlamaForSequenceClassification(
        LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    )
    assert plain_path_reason(classifier) is not None


def test_a_partitioned_or_sharded_head_keeps_the_plain_path() -> None:
    model = _tiny("llama")
    assert plain_path_reason(model) is None
    assert "FSDP" in str(plain_path_reason(model, sharded=True))
    model.lm_head.weight.ds_id = 7  # what DeepSpeed ZeRO-3 marks its partitioned parameters with
    assert "ZeRO-3" in str(plain_path_reason(model))


def _peak_allocated_mib(work: Callable[[], None]) -> float:
    """The peak of the bytes torch allocated on the CPU while `work` ran (the profiler's record
    of every allocation and free, summed in order)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiled:
        work()
    events = [e for e in profiled.profiler.kineto_results.events() if e.name() == "[memory]"]  # type: ignore[union-attr]
    now = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        now += event.nbytes()
        peak = max(peak, now)
    return peak / 2**20


def test_a_large_vocabulary_steps_in_a_fraction_of_the_memory() -> None:
    """A vocabulary-heavy model (32k entries, hidden 64): the plain path holds the fp32
    logits of every token, their log-softmax and their gradient (about 125 MiB each for 1,024
    tokens); the chunked path one chunk's."""
    model = _tiny("llama", vocab=32000, hidden=64, layers=1)
    ids = torch.randint(0, 32000, (1, 1024))

    def step(chunked: bool) -> Callable[[], None]:
        def work() -> None:
            with loss_without_logits(model, chunk=128) if chunked else torch.enable_grad():
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()

        return work

    model.zero_grad(set_to_none=False)  # the weights' gradients exist before both
    plain = _peak_allocated_mib(step(chunked=False))
    chunked = _peak_allocated_mib(step(chunked=True))
    assert plain > 300
    assert chunked < plain / 3, (plain, chunked)


def test_chunks_hold_about_64_mib_of_logits_whatever_the_vocabulary() -> None:
    assert [chunk_rows(v) for v in (4096, 32000, 49152, 151936, 10**6)] == [4096, 512, 256, 128, 128]
    assert all(chunk_rows(v) * v * 4 <= 80 * 2**20 for v in (32000, 49152, 151936))
