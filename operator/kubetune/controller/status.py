"""Status from a snapshot: what an attempt's Job and pods say, classified, and the
FineTuneJob status that follows. Pure functions, tested table by table.

The operator reads the snapshot (Jobs, pods, the trainer's progress), calls `assess_*`,
lets `next_step` decide whether another attempt starts, and writes `next_status`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from kubetune.api import (
    Condition,
    ConditionStatus,
    ConditionType,
    FineTuneJobSpec,
    FineTuneJobStatus,
    MethodType,
    Phase,
)
from kubetune.api.problems import Problem
from kubetune.api.status import OutputStatus, Progress
from kubetune.contract import ExitCode, FinalFigures, RunSummary
from kubetune.controller.observe import JobState, PodState

IMAGE_PULL_FAILED = {"ImagePullBackOff", "InvalidImageName"}
IMAGE_PULLING = {"ErrImagePull"}
POD_ENDED = {"Succeeded", "Failed"}
NOT_RETRYABLE = {int(code) for code in ExitCode if not code.retryable and code is not ExitCode.OK}


class Outcome(enum.StrEnum):
    PREFLIGHT = "Preflight"
    QUEUED = "Queued"
    PENDING = "Pending"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    RETRY = "Retry"
    PREEMPTED = "Preempted"
    FAILED = "Failed"


@dataclass(frozen=True)
class Assessment:
    outcome: Outcome
    reason: str
    message: str = ""
    summary: RunSummary = field(default_factory=RunSummary)


def assess_preflight(job: JobState | None, pods: Sequence[PodState], spec: FineTuneJobSpec) -> Assessment | None:
    """None once the data passed (or when there is no preflight); otherwise where it stands."""
    if job is None or job.complete:
        return None
    if job.failed_reason is not None:
        failed = _failure(job, pods)
        if failed.outcome is Outcome.RETRY and not failed.summary.reported:
            # A crash that left no summary (a signal, a broken image): it trained nothing.
            return Assessment(Outcome.RETRY, "PreflightFailed", failed.message)
        if failed.outcome is not Outcome.FAILED:
            # Preempted: no fault of the data, the preflight starts again uncounted. Retry: an
            # exit the trainer calls retryable (a dataset URL that timed out, a storage hiccup)
            # may pass on another try; next_step decides within the retry budget.
            return failed
        if failed.reason == "OOMKilled":
            # spec.resources.memory sizes the training pods, not the preflight's fixed limit.
            message = (
                f"{failed.message.split(';')[0]}, the preflight's fixed limit: set spec.dataset.preflight: false "
                "to check and tokenise the data in the training pods (spec.resources.memory)"
            )
            return Assessment(Outcome.FAILED, failed.reason, message, failed.summary)
        return failed  # invalid data or spec, a full disk: trying again with the same data fails again
    waiting = _waiting(job, pods, spec)
    if waiting is not None:
        return waiting
    return Assessment(Outcome.PREFLIGHT, "Preflight", "checking and tokenising the dataset on a CPU")


def assess_attempt(job: JobState | None, pods: Sequence[PodState], spec: FineTuneJobSpec) -> Assessment:
    if job is None:
        return Assessment(Outcome.PENDING, "Creating", "creating the training Job")
    if job.complete:
        rank0 = _rank0(pods)
        return Assessment(
            Outcome.SUCCEEDED,
            "Completed",
            (rank0.summary.message if rank0 else "") or "training finished",
            rank0.summary if rank0 else RunSummary(),
        )
    if job.failed_reason is not None:
        return _failure(job, pods)
    waiting = _waiting(job, pods, spec)
    if waiting is not None:
        return waiting
    running = [p for p in pods if p.phase == "Running"]
    ended = [p for p in pods if p.phase in POD_ENDED]
    if ended and len(running) + len(ended) >= spec.resources.nodes:
        # The kubelet reports a pod's end before the Job controller writes the Job's
        # Complete or Failed condition: the attempt ran, and is ending, not starting again.
        return Assessment(
            Outcome.RUNNING,
            "Training",
            f"{len(ended)} of {spec.resources.nodes} pod(s) ended; waiting for the Job's result",
        )
    if len(running) >= spec.resources.nodes:
        return Assessment(Outcome.RUNNING, "Training", f"{len(running)} pod(s) training")
    return Assessment(Outcome.PENDING, "Starting", f"{len(running)} of {spec.resources.nodes} pod(s) running")


def _waiting(job: JobState, pods: Sequence[PodState], spec: FineTuneJobSpec) -> Assessment | None:
    if job.suspended:
        if spec.queue_name is not None and not spec.suspend:
            return Assessment(Outcome.QUEUED, "WaitingForAdmission", f"waiting for Kueue queue {spec.queue_name}")
        return Assessment(Outcome.SUSPENDED, "Suspended", "suspended; the newest checkpoint is kept")
    for pod in pods:
        if pod.waiting_reason in IMAGE_PULL_FAILED:
            return Assessment(Outcome.FAILED, "ImagePullError", f"pod {pod.name}: {pod.waiting_message}".strip())
    for pod in pods:
        if pod.waiting_reason in IMAGE_PULLING:
            return Assessment(Outcome.PENDING, "PullingImage", f"pod {pod.name}: {pod.waiting_message}".strip())
        if pod.waiting_reason == "CreateContainerConfigError":
            return Assessment(Outcome.PENDING, "MissingReference", f"pod {pod.name}: {pod.waiting_message}")
        if pod.unschedulable is not None:
            return Assessment(Outcome.PENDING, "Unschedulable", f"pod {pod.name}: {pod.unschedulable}")
    return None


def _failure(job: JobState, pods: Sequence[PodState]) -> Assessment:
    """Why an attempt failed, most specific cause first."""
    disrupted = next((p for p in pods if p.disruption), None)
    if disrupted is not None:
        return Assessment(Outcome.PREEMPTED, "Preempted", f"pod {disrupted.name}: {disrupted.disruption}")
    if job.failed_reason == "DeadlineExceeded":
        return Assessment(Outcome.FAILED, "DeadlineExceeded", job.failed_message or "activeDeadlineSeconds passed")
    reported = sorted((p for p in pods if p.summary.reason), key=lambda p: (p.exit_code in (0, None), p.index))
    killed = next((p for p in pods if p.terminated_reason == "OOMKilled"), None)
    if killed is not None and not reported:
        return Assessment(
            Outcome.FAILED,
            "OOMKilled",
            f"pod {killed.name} exceeded its memory limit of "
            f"{killed.memory_limit or 'its node'}; raise spec.resources.memory",
        )
    if reported:
        pod = reported[0]
        reason, message = str(pod.summary.reason), pod.summary.message or ""
        if pod.exit_code in NOT_RETRYABLE:
            return Assessment(Outcome.FAILED, reason, message, pod.summary)
        return Assessment(Outcome.RETRY, reason, message, pod.summary)
    failed = next((p for p in pods if p.exit_code not in (None, 0)), None)
    if failed is not None:
        tail = failed.raw_message.strip().splitlines()[-1:] if failed.raw_message else []
        return Assessment(
            Outcome.RETRY,
            "TrainingFailed",
            f"pod {failed.name} exited with code {failed.exit_code}" + (f": {tail[0]}" if tail else ""),
        )
    return Assessment(Outcome.RETRY, job.failed_reason or "TrainingFailed", job.failed_message)


def _rank0(pods: Sequence[PodState]) -> PodState | None:
    return next((p for p in pods if p.index == 0), None)


@dataclass(frozen=True)
class Step:
    """What the operator does next, besides writing status."""

    start_attempt: bool = False
    counts: bool = True
    assessment: Assessment | None = None


def next_step(assessment: Assessment, spec: FineTuneJobSpec, status: FineTuneJobStatus) -> Step:
    """A retryable failure (of a training attempt, or of the preflight) starts the next try
    while the budget lasts; a preemption always does and costs nothing; anything else waits."""
    if assessment.outcome is Outcome.PREEMPTED:
        return Step(start_attempt=True, counts=False, assessment=assessment)
    if assessment.outcome is Outcome.RETRY:
        if retries_used(status) < spec.max_retries:
            return Step(start_attempt=True, counts=True, assessment=assessment)
        exhausted = Assessment(
            Outcome.FAILED,
            "RetriesExhausted",
            f"{_failed_runs(status)}; the last: {assessment.reason}: {assessment.message}",
            assessment.summary,
        )
        return Step(assessment=exhausted)
    return Step(assessment=assessment)


def retries_used(status: FineTuneJobStatus) -> int:
    """Retries spent of maxRetries: every training attempt after the first, and every
    preflight started again after a failure. One budget for both: maxRetries says how many
    failures a job survives, wherever they happen."""
    return max(0, status.attempts - 1) + status.preflight_retries


def _failed_runs(status: FineTuneJobStatus) -> str:
    """The failures that spent the budget, the one just assessed included."""
    if status.attempts == 0:
        return f"the preflight failed {status.preflight_retries + 1} time(s)"
    preflights = f", after {status.preflight_retries} failed preflight run(s)" if status.preflight_retries else ""
    return f"{status.attempts} attempt(s) failed{preflights}"


PHASES = {
    Outcome.PREFLIGHT: Phase.PENDING,
    Outcome.PENDING: Phase.PENDING,
    Outcome.QUEUED: Phase.QUEUED,
    Outcome.RUNNING: Phase.RUNNING,
    Outcome.SUSPENDED: Phase.SUSPENDED,
    Outcome.SUCCEEDED: Phase.SUCCEEDED,
    Outcome.RETRY: Phase.PENDING,
    Outcome.PREEMPTED: Phase.QUEUED,
    Outcome.FAILED: Phase.FAILED,
}


@dataclass(frozen=True)
class SpecDrift:
    """Fields of the spec changed after the job started, where the API server let the edit
    through (no CEL rules). The job goes on with the spec it started with: its pods, and the
    ConfigMap every retry mounts, hold that one."""

    fields: tuple[str, ...]
    """Wire paths of the changed fields: spec.method, spec.training, ..."""
    training_generation: int | None
    """The last generation whose spec the job runs."""

    @property
    def message(self) -> str:
        """While the job runs: what trains, and what to do."""
        return (
            f"{self._changed} changed after the job started, and the edit is not applied: the pods train the spec "
            f"of {self._which}, and a retry would too. Put {self._changed} back, or create a new FineTuneJob with "
            "the new spec (once a job has started, only spec.suspend can change)"
        )

    def ended(self, phase: Phase) -> str:
        """Once the job has succeeded or failed: the result is the started spec's, and the
        manifest as it reads now does not describe it (no pod trains, nothing is retried)."""
        return (
            f"{self._changed} changed after the job started, and the edit was not applied: the job "
            f"{phase.value.lower()} with the spec of {self._which}. Put {self._changed} back to match the result, "
            "or create a new FineTuneJob with the new spec"
        )

    @property
    def _changed(self) -> str:
        return ", ".join(self.fields)

    @property
    def _which(self) -> str:
        return f"generation {self.training_generation}" if self.training_generation else "the job's start"


IMMUTABLE_SPEC_CHANGED = "ImmutableSpecChanged"


def next_status(
    previous: FineTuneJobStatus | None,
    generation: int,
    assessment: Assessment,
    now: datetime,
    progress: Progress | None = None,
    model: str | None = None,
    method: MethodType | None = None,
    drift: SpecDrift | None = None,
) -> FineTuneJobStatus:
    """The status that follows the assessment. Under a spec drift, observedGeneration stays at
    the generation in training: the status describes that spec, not the edited one."""
    previous = previous or FineTuneJobStatus()
    phase = PHASES[assessment.outcome]
    conditions = [_condition(*row, now, generation) for row in _condition_table(assessment, drift)]
    finished = phase.finished
    succeeded = assessment.outcome is Outcome.SUCCEEDED
    output = _output(assessment.summary) if succeeded else previous.output
    figures = FinalFigures.from_summary(assessment.summary) if succeeded else FinalFigures()
    observed = drift.training_generation if drift is not None and drift.training_generation else generation
    return previous.model_copy(
        update={
            "phase": phase,
            "conditions": merge_conditions(previous.conditions, conditions),
            "observed_generation": observed,
            "model": model or previous.model,
            "method": method or previous.method,
            "progress": final_progress(progress or previous.progress, figures),
            "metrics": figures.numbers or previous.metrics,
            "output": output,
            "completion_time": previous.completion_time or (now if finished else None),
        }
    )


def final_progress(progress: Progress | None, figures: FinalFigures) -> Progress | None:
    """The progress with the run's final figures over the last ones polled: a run that ends
    between two polls (or before the first) still shows its steps and losses."""
    if figures.steps is None and figures.train_loss is None and figures.eval_loss is None:
        return progress
    progress = progress or Progress()
    step = figures.steps if figures.steps is not None else progress.step
    total = progress.total_steps or step
    return progress.model_copy(
        update={
            "step": step,
            "total_steps": total,
            "percent": round(min(100.0, 100 * step / total), 1) if total else progress.percent,
            "loss": figures.train_loss if figures.train_loss is not None else progress.loss,
            "eval_loss": figures.eval_loss if figures.eval_loss is not None else progress.eval_loss,
            # A preference run's final evaluation, not the last one polled (often the untrained model's).
            "eval_reward_accuracy": figures.numbers.get("evalRewardAccuracy", progress.eval_reward_accuracy),
            "tokens_per_second": figures.tokens_per_second or progress.tokens_per_second,
            "eta": None,
            "phase": None,  # the trainer is done: neither training nor saving
        }
    )


def _condition_table(
    assessment: Assessment, drift: SpecDrift | None = None
) -> list[tuple[ConditionType, bool, str, str]]:
    """Each condition type: whether it holds, and its reason and message."""
    outcome, reason, message = assessment.outcome, assessment.reason, assessment.message
    queued = outcome is Outcome.QUEUED
    suspended, succeeded, failed = (outcome is o for o in (Outcome.SUSPENDED, Outcome.SUCCEEDED, Outcome.FAILED))
    return [
        (ConditionType.VALID, *_validity(drift, PHASES[outcome])),
        (ConditionType.ADMITTED, not queued, reason if queued else "Admitted", message if queued else ""),
        (ConditionType.RUNNING, outcome is Outcome.RUNNING, reason, message),
        (ConditionType.SUSPENDED, suspended, "Suspended" if suspended else "NotSuspended", ""),
        (ConditionType.SUCCEEDED, succeeded, reason if succeeded else "NotFinished", ""),
        (ConditionType.FAILED, failed, reason if failed else "NoFailure", message if failed else ""),
    ]


def _validity(drift: SpecDrift | None, phase: Phase) -> tuple[bool, str, str]:
    if drift is None:
        return True, "Valid", ""
    return False, IMMUTABLE_SPEC_CHANGED, drift.ended(phase) if phase.finished else drift.message


def validity_after_finish(
    previous: FineTuneJobStatus, generation: int, drift: SpecDrift | None, now: datetime
) -> FineTuneJobStatus:
    """A finished job's status once its spec is edited, or put back, after the end: the Valid
    condition and observedGeneration follow; the rest is the result of the spec that ran."""
    observed = drift.training_generation if drift is not None and drift.training_generation else generation
    valid = _condition(ConditionType.VALID, *_validity(drift, previous.phase), now, generation)
    others = [c for c in previous.conditions if c.type != ConditionType.VALID]
    return previous.model_copy(
        update={
            "conditions": merge_conditions(previous.conditions, [valid]) + others,
            "observed_generation": observed,
        }
    )


def _condition(
    kind: ConditionType, holds: bool, reason: str, message: str, now: datetime, generation: int
) -> Condition:
    return Condition(
        type=kind,
        status=ConditionStatus.TRUE if holds else ConditionStatus.FALSE,
        reason=reason,
        message=message,
        last_transition_time=now,
        observed_generation=generation,
    )


def merge_conditions(old: Sequence[Condition], new: Sequence[Condition]) -> list[Condition]:
    """New conditions, keeping the old transition time where the status did not change."""
    before = {c.type: c for c in old}
    merged = []
    for condition in new:
        kept = before.get(condition.type)
        if kept is not None and kept.status == condition.status:
            condition = condition.model_copy(update={"last_transition_time": kept.last_transition_time})
        merged.append(condition)
    return merged


def invalid_status(
    problems: Sequence[Problem], generation: int, now: datetime, reason: str = "InvalidSpec"
) -> FineTuneJobStatus:
    """A manifest that passed the schema but not the rules (InvalidSpec), or one this
    installation refuses (NotAllowed, DoesNotFit): it never reaches a pod."""
    message = "; ".join(str(p) for p in problems)
    return FineTuneJobStatus(
        phase=Phase.FAILED,
        observed_generation=generation,
        completion_time=now,
        conditions=[
            _condition(ConditionType.VALID, False, reason, message, now, generation),
            _condition(ConditionType.FAILED, True, reason, message, now, generation),
        ],
    )


def _output(summary: RunSummary) -> OutputStatus | None:
    output = summary.output
    if output is None or output.location is None:
        return None
    return OutputStatus.model_validate(output.model_dump(by_alias=True, exclude_none=True))
