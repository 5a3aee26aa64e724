"""The FineTuneJob status: what the operator observed, written only by the operator."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import Field, WithJsonSchema, model_validator

from kubetune.api.base import ApiModel
from kubetune.api.enums import ConditionStatus, ConditionType, MethodType, OutputFormat, Phase, TrainerPhase
from kubetune.api.facts import ModelFacts

Timestamp = Annotated[datetime, WithJsonSchema({"type": "string", "format": "date-time"})]


class Condition(ApiModel):
    """One aspect of the job's state, in the Kubernetes condition convention."""

    type: ConditionType
    """Valid, Admitted, Running, Succeeded, Failed or Suspended."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: Annotated[str, Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)]
    """Machine-readable cause in CamelCase, e.g. OutOfMemory or DatasetInvalid."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """What happened and what to do about it, for a person."""
    last_transition_time: Timestamp
    """When the status last changed."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The spec generation the condition was computed from."""


class Progress(ApiModel):
    """Live training progress, mirrored from the rank-0 trainer: what it serves at GET
    /progress (camelCase JSON), and what the operator writes here, with the percentage."""

    step: Annotated[int, Field(ge=0)] = 0
    """Optimizer steps done."""
    total_steps: Annotated[int, Field(ge=0)] | None = None
    """Optimizer steps planned."""
    percent: Annotated[float, Field(ge=0, le=100)] | None = None
    """step / totalSteps, in percent."""
    epoch: Annotated[float, Field(ge=0)] | None = None
    """Epochs done, fractional."""
    loss: float | None = None
    """Training loss, averaged since the last report."""
    eval_loss: float | None = None
    """Latest evaluation loss."""
    learning_rate: float | None = None
    """Current learning rate."""
    reward_accuracy: Annotated[float, Field(ge=0, le=1)] | None = None
    """Preference objectives (dpo, orpo): the share of pairs since the last report whose
    chosen answer got the higher reward (a tie counts half)."""
    reward_margin: float | None = None
    """Preference objectives: the chosen answer's reward minus the rejected one's, averaged
    over the pairs since the last report."""
    eval_reward_accuracy: Annotated[float, Field(ge=0, le=1)] | None = None
    """Preference objectives: the reward accuracy on the evaluation pairs at the latest evaluation."""
    tokens_per_second: Annotated[float, Field(ge=0)] | None = None
    """Trained (non-padding) tokens per second, all ranks together."""
    eta: Timestamp | None = None
    """Estimated end of training."""
    updated_at: Timestamp | None = None
    """When the trainer reported these figures."""
    phase: TrainerPhase | None = None
    """What the trainer is doing: starting (data and model), training, or saving (evaluation
    and outputs)."""


OCI_PINNED = re.compile(r"^oci://[^@]+@(sha256:[0-9a-f]{64})$")
"""An image location as the trainer reports it after a push: pinned by the pushed digest."""


class OutputStatus(ApiModel):
    """Where the result landed, from the trainer's final summary."""

    location: Annotated[str, Field(max_length=4096)]
    """Where the result is: pvc://claim/path, s3://bucket/prefix,
    oci://registry/repository:tag@sha256:... (the pushed image, pinned by its digest), the
    Hugging Face repository's page, https://huggingface.co/owner/name (/tree/branch for a
    branch other than main; the HF_ENDPOINT host for a private Hub), or for `kubetune run
    --output` the folder it names."""
    formats: list[OutputFormat] = []
    """Forms written."""
    digest: Annotated[str, Field(max_length=256)] | None = None
    """Digest of the pushed image (sha256:...), for OCI destinations: the one the location is pinned by."""

    @model_validator(mode="before")
    @classmethod
    def _digest_of_a_pinned_image(cls, data: Any) -> Any:
        # The trainer's summary carries the digest once, in the pinned location; the field
        # is what a script reads without parsing the location.
        if isinstance(data, dict) and data.get("digest") is None and isinstance(data.get("location"), str):
            pinned = OCI_PINNED.match(data["location"])
            if pinned:
                return {**data, "digest": pinned.group(1)}
        return data


KopfState = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


class FineTuneJobStatus(ApiModel):
    """Observed state of a FineTuneJob."""

    phase: Phase = Phase.PENDING
    """Pending, Queued, Running, Succeeded, Failed or Suspended."""
    conditions: list[Condition] = []
    """Current conditions, one per type."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The spec generation the status was computed from."""
    model: Annotated[str, Field(max_length=512)] | None = None
    """The base model, for display: preset name, repository id or volume path."""
    method: MethodType | None = None
    """The fine-tuning method in training: the spec's as the job started (an edit after the
    start is not applied, see the Valid condition)."""
    progress: Progress | None = None
    """Live progress of the current attempt."""
    attempts: Annotated[int, Field(ge=0)] = 0
    """Training attempts: the first, and each retry after a failure (every retry counts
    against maxRetries)."""
    preflight_retries: Annotated[int, Field(ge=0)] = 0
    """Preflights started again after a failure that another try may not repeat (exit 1: a
    dataset URL that timed out, a storage hiccup); each counts against maxRetries."""
    preemptions: Annotated[int, Field(ge=0)] = 0
    """Attempts ended by preemption, eviction or a node drain; they do not count against maxRetries."""
    output: OutputStatus | None = None
    """Where the result landed."""
    metrics: dict[str, float] | None = None
    """Final figures of the run, from the trainer's summary: steps, trainLoss, evalLoss and the
    task's own (evalAccuracy, perplexity, ...)."""
    model_facts: ModelFacts | None = None
    """The size of a model that is not a preset, as the preflight read it from its config.json:
    what an `accelerators: auto` job is sized from."""
    start_time: Timestamp | None = None
    """When the first attempt was created. From then on the spec is immutable but for suspend."""
    completion_time: Timestamp | None = None
    """When the job succeeded or failed for good."""
    kopf: KopfState | None = None
    """Bookkeeping of the operator framework (Kopf); kept open so the API server does not prune it."""
