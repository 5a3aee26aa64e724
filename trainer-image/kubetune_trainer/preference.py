"""Preference tuning on kubetune's own data path: the DPO and ORPO losses, and the Trainer that
computes them from padding-free batches of pairs (`kubetune_trainer.data.preference`).

Why not TRL's DPOTrainer and ORPOTrainer: they tokenise and pad on their own, so a run would
lose the preflight's cache, the padding-free batches and the counting Trainer's progress,
checkpoints and outputs. Here the loss is a few tensor operations on the log-probabilities of
each answer, and everything else is the run's usual path.

The reference model of dpo is, by default, the base itself: with an adapter method, the model
with its adapter switched off (no second copy); with full fine-tuning, a frozen copy taken
before training (under ZeRO-3, where each rank holds only its shard, the base loaded again).
A reference named in the spec is loaded beside the model and frozen; under ZeRO-3 a reference
runs in a DeepSpeed engine of its own that gathers its shards for each forward pass.

With several ranks, each scores its own pairs; the figures logged are the means over every
pair of every rank.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from kubetune.api.enums import Objective, Precision, PreferenceLoss
from kubetune.api.spec import FineTuneJobSpec, PreferenceSpec
from kubetune_trainer.data.preference import SEQUENCE_IDS
from kubetune_trainer.data.tokenize import IGNORE_INDEX
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.strategy import shards_weights
from kubetune_trainer.trainers import CountingTrainer

FIGURES = ("reward_accuracy", "reward_margin", "logp_chosen", "logp_rejected")
"""What a preference run reports at each log and evaluation, besides its loss."""


@dataclass(frozen=True)
class Scores:
    """Summed log-probabilities of each pair's answers, and their token counts."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor

    @property
    def chosen_mean(self) -> torch.Tensor:
        return self.chosen / self.chosen_tokens.clamp(min=1)

    @property
    def rejected_mean(self) -> torch.Tensor:
        return self.rejected / self.rejected_tokens.clamp(min=1)


@dataclass(frozen=True)
class Outcome:
    """A batch's loss per pair, and the implicit reward of each answer."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def sequence_scores(logits: torch.Tensor, labels: torch.Tensor, sequence_ids: torch.Tensor) -> Scores:
    """Each sequence's summed log-probability of its labelled tokens. Only labelled positions
    are taken to float32, so the vocabulary-wide softmax costs no more than its targets need."""
    targets, owners = labels[:, 1:], sequence_ids[:, 1:]
    mask = targets != IGNORE_INDEX
    picked = logits[:, :-1][mask].float()
    chosen_targets = targets[mask]
    logps = picked.gather(-1, chosen_targets.unsqueeze(-1)).squeeze(-1) - picked.logsumexp(-1)
    count = int(sequence_ids.max().item()) + 1
    sums = torch.zeros(count, device=logits.device).index_add(0, owners[mask], logps)
    tokens = torch.zeros(count, device=logits.device).index_add(0, owners[mask], torch.ones_like(logps))
    half = count // 2
    return Scores(sums[:half], sums[half:], tokens[:half], tokens[half:])


def score(model: Any, inputs: dict[str, torch.Tensor]) -> Scores:
    """The model's scores of a batch of pairs."""
    extra = {"attention_mask": inputs["attention_mask"]} if "attention_mask" in inputs else {}
    logits = model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], use_cache=False, **extra).logits
    return sequence_scores(logits, inputs["labels"], inputs[SEQUENCE_IDS])


def dpo_outcome(policy: Scores, reference: Scores, beta: float, loss: PreferenceLoss) -> Outcome:
    """DPO's loss on the margin between the answers' log-probability ratios to the reference
    (ipo: per-token ratios, as the IPO paper and TRL take them)."""
    if loss is PreferenceLoss.IPO:
        chosen = policy.chosen_mean - reference.chosen_mean
        rejected = policy.rejected_mean - reference.rejected_mean
    else:
        chosen, rejected = policy.chosen - reference.chosen, policy.rejected - reference.rejected
    margin = chosen - rejected
    if loss is PreferenceLoss.SIGMOID:
        losses = -F.logsigmoid(beta * margin)
    elif loss is PreferenceLoss.HINGE:
        losses = torch.relu(1 - beta * margin)
    else:
        losses = (margin - 1 / (2 * beta)) ** 2
    return Outcome(losses, beta * chosen.detach(), beta * rejected.detach())


def orpo_outcome(policy: Scores, beta: float) -> Outcome:
    """ORPO's loss: the chosen answer's negative log-likelihood per token, plus beta times the
    negative log-sigmoid of the log odds ratio of chosen to rejected. The reward of an answer is
    beta times its mean log-probability."""
    chosen, rejected = policy.chosen_mean, policy.rejected_mean
    log_odds = (chosen - rejected) - (_log1m_exp(chosen) - _log1m_exp(rejected))
    losses = -chosen - beta * F.logsigmoid(log_odds)
    return Outcome(losses, beta * chosen.detach(), beta * rejected.detach())


def _log1m_exp(logp: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(logp)), finite where the probability rounds to 1."""
    return torch.log(-torch.expm1(logp.clamp(max=-1e-6)))


def figures(outcome: Outcome, policy: Scores) -> dict[str, list[float]]:
    """Each pair's figures: whether the chosen answer wins (a tie counts half: the untrained
    model ties every pair with its own reference), the reward margin, and the answers' summed
    log-probabilities."""
    chosen, rejected = outcome.chosen_rewards, outcome.rejected_rewards
    wins = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()
    values = {
        "reward_accuracy": wins,
        "reward_margin": chosen - rejected,
        "logp_chosen": policy.chosen.detach(),
        "logp_rejected": policy.rejected.detach(),
    }
    return {name: value.float().tolist() for name, value in values.items()}


class PreferenceTrainer(CountingTrainer):
    """The counting Trainer with a preference loss: dpo against a reference, or orpo."""

    def __init__(
        self, *args: Any, objective: Objective, preference: PreferenceSpec, reference: Any = None, **kwargs: Any
    ) -> None:
        from peft import PeftModel

        super().__init__(*args, **kwargs)
        self.objective: Objective = objective
        self.preference: PreferenceSpec = preference
        # The loss is a mean over pairs, so the Trainer divides it across accumulated micro-batches.
        self.model_accepts_loss_kwargs = False
        if objective.uses_reference and reference is None and not isinstance(self.model, PeftModel):
            # Full fine-tuning: the reference is the base as it is now, before any step (under
            # ZeRO-3 the loader hands the base, loaded again, since a shard cannot be copied whole).
            reference = copy.deepcopy(self.model)
        if reference is None:
            self.reference = None
        elif shards_weights(self.args):
            self.reference = _sharded(reference, self.args)
        else:
            self.reference = _frozen(reference, self.args, autocast=self.accelerator.native_amp)
        self._kept: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        tokens = inputs.pop("num_tokens", None)
        if tokens is not None and model.training:
            self.meter.tokens += int(tokens)
        policy = score(model, inputs)
        if self.objective.uses_reference:
            outcome = dpo_outcome(
                policy, self._reference_scores(model, inputs), self.preference.beta, self.preference.loss
            )
        else:
            outcome = orpo_outcome(policy, self.preference.beta)
        kept = self._kept["train" if model.training else "eval"]
        for name, values in figures(outcome, policy).items():
            kept[name] += values
        loss = outcome.losses.mean()
        return (loss, {}) if return_outputs else loss

    def _reference_scores(self, model: Any, inputs: dict[str, Any]) -> Scores:
        with torch.no_grad():
            if self.reference is not None:
                # The mixed precision accelerate wraps the policy's forward in (none under DeepSpeed).
                with self.accelerator.autocast():
                    return score(self.reference, inputs)
            unwrapped = self.accelerator.unwrap_model(model)
            with unwrapped.disable_adapter(), _evaluating(unwrapped):
                return score(unwrapped, inputs)

    def prediction_step(
        self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None
    ) -> tuple[torch.Tensor, None, None]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # In place: evaluate() returns the very dict it logs, so the run's summary gets the figures too.
        kind, prefix = ("eval", "eval_") if "eval_loss" in logs else ("train", "")
        # Every rank logs at the same steps (the Trainer gathers the loss there too), so each joins the sum.
        pooled = pooled_means(self._kept[kind], self.args.world_size, self.args.device)
        logs.update({f"{prefix}{name}": value for name, value in pooled.items()})
        self._kept[kind].clear()
        super().log(logs, start_time)


def pooled_means(kept: dict[str, list[float]], world_size: int, device: Any) -> dict[str, float]:
    """Each figure's mean over the pairs every rank scored since the last log (a collective:
    with several ranks, every rank calls it at the same point)."""
    totals = torch.tensor([[sum(kept[name]), len(kept[name])] for name in FIGURES], dtype=torch.float64)
    if world_size > 1:
        totals = totals.to(device)
        torch.distributed.all_reduce(totals)
    return {name: total / count for name, (total, count) in zip(FIGURES, totals.tolist(), strict=True) if count}


def _frozen(model: Any, args: Any, autocast: bool) -> Any:
    """A reference model on the training device, in evaluation mode and without gradients, in
    the 16-bit compute dtype as the policy computes in it: under `autocast` (the policy's fp32
    weights cast for each product) its linear layers alone, most of a full-precision copy's
    memory halved; under DeepSpeed ZeRO-1 or 2, which holds the policy's parameters in 16 bits,
    its parameters."""
    model.eval()
    model.requires_grad_(False)
    half = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
    if half is not None and not getattr(model, "is_loaded_in_4bit", False):
        if autocast:
            linear_layers_to(model, half)
        else:  # as DeepSpeed casts the policy: the parameters, not the buffers (rotary inv_freq stays fp32)
            for parameter in model.parameters():
                parameter.data = parameter.data.to(half)
    return model.to(args.device) if not getattr(model, "is_loaded_in_4bit", False) else model


def linear_layers_to(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast what autocast casts for each product, the linear layers, and nothing else: norms,
    embeddings and any weight a linear layer shares with them (a head tied to the embedding)
    keep their dtype. A copy of the policy then computes under autocast exactly as the policy
    does, and the untrained policy ties every pair with its reference; a copy cast whole
    carried a 16-bit residual stream and its rounding into every reward (held-out reward
    accuracy 0.81 before the first step on a bf16 CPU)."""
    linear = torch.nn.Linear
    kept = {
        id(parameter)
        for module in model.modules()
        if not isinstance(module, linear)
        for parameter in module.parameters(recurse=False)
    }
    for module in model.modules():
        if isinstance(module, linear) and id(module.weight) not in kept:
            module.to(dtype)


def _sharded(model: Any, args: Any) -> Any:
    """A frozen reference under ZeRO-3, in an engine of its own: no optimizer, the run's
    precision, and each forward pass gathering the shards its layers need (as the policy's does)."""
    import deepspeed

    hidden = getattr(model.config, "hidden_size", None) or max(getattr(model.config, "hidden_sizes", [0]) or [0])
    zero: dict[str, Any] = {"stage": 3}
    if hidden:
        zero |= {"stage3_param_persistence_threshold": 10 * hidden, "stage3_prefetch_bucket_size": hidden * hidden}
    config = {
        "train_micro_batch_size_per_gpu": args.per_device_train_batch_size,
        "bf16": {"enabled": bool(args.bf16)},
        "fp16": {"enabled": bool(args.fp16)},
        "zero_optimization": zero,
        "steps_per_print": 1_000_000,
    }
    model.requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


def load_reference(spec: FineTuneJobSpec, runtime: Runtime, precision: Precision, sharded: bool) -> Any | None:
    """The reference model of a dpo run, loaded as its base would be (4-bit with a 4-bit
    method): the one the spec names, or, for full fine-tuning whose weights are `sharded` by
    ZeRO-3, the base again. None when the trainer finds the reference in the model itself."""
    from kubetune_trainer.model import fetch_once, load_model, resolve_source

    if not spec.objective.uses_reference:
        return None
    named = spec.preferences.reference
    if named is None and not (sharded and not spec.method.type.uses_adapter):
        return None
    as_base = spec if named is None else spec.model_copy(update={"model": named})
    source = fetch_once(resolve_source(as_base, runtime), runtime)
    return load_model(as_base, source, precision, runtime, frozen=True).model


@contextmanager
def _evaluating(model: Any) -> Iterator[None]:
    """The reference answers without dropout, as a frozen copy would; the model trains on after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
