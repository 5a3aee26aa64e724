"""What the operator reads back from the cluster, reduced to the facts status needs.

Kubernetes objects arrive as dicts; these functions pick out the few fields that matter
(a Job's conditions, a pod's container states, the trainer's termination message) into
small frozen records, so the status logic works on facts, not on nested dicts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from kubetune.contract import Progress, RunSummary
from kubetune.controller.builders import (
    ATTEMPT_LABEL,
    KUEUE_QUEUE_LABEL,
    ROLE_LABEL,
    STARTED_SPEC_ANNOTATION,
    TRAINER,
)


@dataclass(frozen=True)
class JobState:
    name: str
    attempt: int
    suspended: bool
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    complete: bool = False
    failed_reason: str | None = None
    """Reason of the Job's Failed condition: BackoffLimitExceeded, DeadlineExceeded, PodFailurePolicy, ..."""
    failed_message: str = ""
    start_time: str | None = None
    started_spec: dict[str, Any] | None = None
    """The spec as the FineTuneJob started (but for suspend), as the operator recorded it on the Job."""


@dataclass(frozen=True)
class PodState:
    name: str
    index: int
    phase: str
    waiting_reason: str | None = None
    waiting_message: str = ""
    exit_code: int | None = None
    terminated_reason: str | None = None
    summary: RunSummary = field(default_factory=RunSummary)
    """The trainer's termination message, parsed (empty when absent or not JSON)."""
    raw_message: str = ""
    unschedulable: str | None = None
    """The scheduler's message while the pod cannot be placed."""
    disruption: str | None = None
    """Reason of a DisruptionTarget condition (preemption, eviction, node drain)."""
    memory_limit: str | None = None
    address: str | None = None
    """The pod's IP, once it has one."""


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type", ""): c for c in (obj.get("status") or {}).get("conditions") or []}


def job_state(job: dict[str, Any]) -> JobState:
    status = job.get("status") or {}
    conditions = _conditions(job)
    failed = conditions.get("Failed", {})
    complete = conditions.get("Complete", {})
    labels = (job.get("metadata") or {}).get("labels") or {}
    return JobState(
        name=job["metadata"]["name"],
        attempt=int(labels.get(ATTEMPT_LABEL, "0")),
        suspended=bool((job.get("spec") or {}).get("suspend")),
        active=int(status.get("active") or 0),
        succeeded=int(status.get("succeeded") or 0),
        failed=int(status.get("failed") or 0),
        complete=complete.get("status") == "True",
        failed_reason=failed.get("reason") if failed.get("status") == "True" else None,
        failed_message=failed.get("message", "") if failed.get("status") == "True" else "",
        start_time=status.get("startTime"),
        started_spec=_started_spec(job),
    )


def pod_state(pod: dict[str, Any]) -> PodState:
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    annotations = meta.get("annotations") or {}
    index = int(annotations.get("batch.kubernetes.io/job-completion-index", "0"))
    container: dict[str, Any] = next((c for c in status.get("containerStatuses") or [] if c.get("name") == TRAINER), {})
    state = container.get("state") or {}
    waiting, terminated = state.get("waiting") or {}, state.get("terminated") or {}
    conditions = _conditions(pod)
    scheduled = conditions.get("PodScheduled", {})
    disruption = conditions.get("DisruptionTarget", {})
    message = terminated.get("message", "")
    limits: dict[str, Any] = next(
        (c.get("resources", {}).get("limits", {}) for c in spec.get("containers") or [] if c.get("name") == TRAINER), {}
    )
    return PodState(
        name=meta.get("name", ""),
        index=index,
        phase=status.get("phase", "Pending"),
        waiting_reason=waiting.get("reason"),
        waiting_message=waiting.get("message", ""),
        exit_code=terminated.get("exitCode"),
        terminated_reason=terminated.get("reason"),
        summary=RunSummary.parse(message),
        raw_message=message,
        unschedulable=scheduled.get("message") if scheduled.get("reason") == "Unschedulable" else None,
        disruption=disruption.get("reason") if disruption.get("status") == "True" else None,
        memory_limit=limits.get("memory"),
        address=status.get("podIP"),
    )


def owning_job(pod: dict[str, Any]) -> str:
    """The uid of the Job a pod belongs to (a Job deleted and made again under the same name,
    like a preflight started again, is another Job, and the old one's pods are not its)."""
    meta = pod.get("metadata") or {}
    owner = next((o for o in meta.get("ownerReferences") or [] if o.get("kind") == "Job"), None)
    if owner is not None:
        return str(owner.get("uid", ""))
    labels = meta.get("labels") or {}
    return str(labels.get("batch.kubernetes.io/controller-uid") or labels.get("controller-uid") or "")


@dataclass(frozen=True)
class JobRecord:
    """A Job of a FineTuneJob as the operator keeps it: its facts, and what places it in the
    snapshot (its role, and the uid its pods name as their owner)."""

    uid: str
    role: str | None
    """preflight or train."""
    queued: bool
    """Made for a Kueue queue (its label says so, whatever the spec reads now)."""
    state: JobState


@dataclass(frozen=True)
class PodRecord:
    uid: str
    job: str
    """The uid of the Job the pod belongs to, or for a pod that names no owner its job-name label."""
    state: PodState


def job_record(job: dict[str, Any]) -> JobRecord:
    meta = job.get("metadata") or {}
    labels = meta.get("labels") or {}
    return JobRecord(
        uid=str(meta.get("uid") or meta.get("name", "")),
        role=labels.get(ROLE_LABEL),
        queued=KUEUE_QUEUE_LABEL in labels,
        state=job_state(job),
    )


def pod_record(pod: dict[str, Any]) -> PodRecord:
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    job_name = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name") or ""
    return PodRecord(
        uid=str(meta.get("uid") or meta.get("name", "")),
        job=owning_job(pod) or job_name,
        state=pod_state(pod),
    )


def _started_spec(job: dict[str, Any]) -> dict[str, Any] | None:
    """None when the Job does not record it (made by an older operator) or it cannot be read."""
    text = ((job.get("metadata") or {}).get("annotations") or {}).get(STARTED_SPEC_ANNOTATION)
    if not text:
        return None
    try:
        spec = json.loads(text)
    except ValueError:
        return None
    return spec if isinstance(spec, dict) else None


@dataclass(frozen=True)
class WorkloadState:
    """Kueue's Workload for a queued Job: the operator suspends a queued job through it."""

    name: str
    owner_uid: str
    """uid of the Job the Workload admits."""
    active: bool
    admitted: bool


def workload_state(workload: dict[str, Any]) -> WorkloadState:
    meta = workload.get("metadata") or {}
    owner: dict[str, Any] = next((o for o in meta.get("ownerReferences") or [] if o.get("kind") == "Job"), {})
    return WorkloadState(
        name=meta.get("name", ""),
        owner_uid=owner.get("uid", ""),
        active=(workload.get("spec") or {}).get("active", True) is not False,
        admitted=_conditions(workload).get("Admitted", {}).get("status") == "True",
    )


PROGRESS_FIELDS = set(Progress.model_fields) | {f.alias for f in Progress.model_fields.values() if f.alias}


def progress_from_report(report: Any) -> Progress | None:
    """The trainer's GET /progress answer as status.progress; None when it is not one.

    Both sides use the one model (kubetune.contract.Progress); fields it does not know (a
    newer trainer's) are left out, and the percentage is worked out here."""
    if not isinstance(report, dict):
        return None
    try:
        progress = Progress.model_validate({k: v for k, v in report.items() if k in PROGRESS_FIELDS})
    except ValueError:
        return None
    if progress.total_steps:
        percent = round(min(100.0, 100 * progress.step / progress.total_steps), 1)
        progress = progress.model_copy(update={"percent": percent})
    return progress
