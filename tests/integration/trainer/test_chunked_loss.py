"""kubetune's Trainer computes a causal LM's training loss without the full logits, and trains
exactly as the plain path would: the same losses step after step, the same weights at the end."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from kubetune_trainer import trainers
from kubetune_trainer.data.collate import PaddingFreeCollator
from kubetune_trainer.data.tokenize import IGNORE_INDEX, TokenizedExample
from kubetune_trainer.progress import TokenMeter
from kubetune_trainer.trainers import CountingTrainer, ListDataset

VOCAB = 2000


def _examples() -> list[TokenizedExample]:
    """Chats of a few lengths whose first tokens are a prompt without loss."""
    rng = random.Random(0)
    out = []
    for _ in range(16):
        ids = [rng.randrange(1, VOCAB) for _ in range(rng.randint(6, 30))]
        prompt = rng.randint(1, 4)
        out.append(TokenizedExample(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return out


def _model(adapter: bool) -> Any:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config)
    if adapter:
        lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    return model


def _train(folder: Path, adapter: bool) -> tuple[list[float], dict[str, torch.Tensor]]:
    model = _model(adapter)
    args = TrainingArguments(
        output_dir=str(folder),
        max_steps=4,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        # Plain SGD: Adam's first steps move every weight by the learning rate whatever the
        # gradient's size, so rounding-sized differences in gradients near zero would show.
        optim="sgd",
        learning_rate=0.5,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = CountingTrainer(
        model=model,
        args=args,
        train_dataset=ListDataset(_examples()),
        data_collator=PaddingFreeCollator(pad_token_id=0),
        meter=TokenMeter(),
    )
    trainer.train()
    losses = [record["loss"] for record in trainer.state.log_history if "loss" in record]
    weights = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return losses, weights


@contextmanager
def _plain(model: Any, sharded: bool = False) -> Iterator[bool]:
    yield False


@pytest.mark.parametrize("adapter", [False, True], ids=["full", "lora"])
def test_training_through_the_chunked_loss_matches_the_plain_path(
    adapter: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four steps of two accumulated padding-free micro-batches (so num_items_in_batch counts
    the step's targets), with prompts left out of the loss."""
    chunked_losses, chunked_weights = _train(tmp_path / "chunked", adapter)

    monkeypatch.setattr(trainers, "loss_without_logits", _plain)
    plain_losses, plain_weights = _train(tmp_path / "plain", adapter)

    assert len(chunked_losses) == len(plain_losses) == 4
    assert chunked_losses == pytest.approx(plain_losses, rel=1e-4)
    assert chunked_weights.keys() == plain_weights.keys()
    for name, weight in plain_weights.items():
        torch.testing.assert_close(chunked_weights[name], weight, rtol=1e-4, atol=1e-5, msg=name)


def test_the_training_forward_never_makes_the_full_logits(tmp_path: Path) -> None:
    """The head's own forward (full-vocabulary logits) runs in evaluation only, not in training."""
    model = _model(adapter=False)
    calls: list[tuple[int, ...]] = []
    model.lm_head.register_forward_hook(lambda module, inputs, output: calls.append(tuple(output.shape)))
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=2,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = CountingTrainer(
        model=model,
        args=args,
        train_dataset=ListDataset(_examples()),
        data_collator=PaddingFreeCollator(pad_token_id=0),
        meter=TokenMeter(),
    )
    trainer.train()
    assert calls == []
    assert trainer.evaluate(ListDataset(_examples()[:2]))["eval_loss"] > 0
    assert calls and calls[0][-1] == VOCAB
