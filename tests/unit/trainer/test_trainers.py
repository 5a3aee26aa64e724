"""kubetune's Trainer: what it changes in a step must not change what the step computes."""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from peft.helpers import disable_input_dtype_casting
from transformers import LlamaConfig, LlamaForCausalLM


def _lora_model() -> Any:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.2,
    )
    base = LlamaForCausalLM(config).to(torch.bfloat16)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False)
    return get_peft_model(base, lora).train()  # the adapters stay fp32, as peft keeps them


def _step(model: Any, uncast: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    ids = torch.arange(3, 43).reshape(2, 20)
    model.zero_grad()
    with disable_input_dtype_casting(model, active=uncast), torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_adapter_inputs_left_in_the_compute_dtype_train_the_same() -> None:
    """Under autocast, skipping peft's cast of each adapter input to fp32 (the copy the Trainer
    saves) gives the same loss and the same fp32 gradients."""
    model = _lora_model()
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)

    cast_loss, cast_grads = _step(model, uncast=False)
    uncast_loss, uncast_grads = _step(model, uncast=True)

    assert cast_grads and cast_grads.keys() == uncast_grads.keys()
    torch.testing.assert_close(uncast_loss, cast_loss)
    for name, grad in cast_grads.items():
        assert grad.dtype == torch.float32, name
        torch.testing.assert_close(uncast_grads[name], grad, msg=name)
