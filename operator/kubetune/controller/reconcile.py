"""What the operator does next for one FineTuneJob, decided from a snapshot of the cluster.

`plan` is a pure function: the FineTuneJob as read, what exists of its children, the
settings and the time in; a list of actions out (create this, delete that, suspend, write
this status, emit this Event). The Kopf side reads the snapshot and carries the actions
out in order, so every decision here is tested table by table without a cluster, and a
restarted operator that reads the same snapshot decides the same thing.

Order matters where a crash between two actions could leave a wrong count: the status
that counts an attempt is written before that attempt's Job is created, so a restart finds
either the Job (nothing to do) or the count without the Job (create it); never a second Job.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kubetune.api import (
    ConditionStatus,
    ConditionType,
    FineTuneJob,
    FineTuneJobStatus,
    InvalidSpec,
    Phase,
    parse_finetunejob,
)
from kubetune.api.facts import ModelFacts, needs_model_facts
from kubetune.api.problems import Problem
from kubetune.api.status import Progress
from kubetune.controller import names
from kubetune.controller.admission import admission_problems
from kubetune.controller.builders import (
    Context,
    Manifest,
    NotBuildable,
    build_config_map,
    build_preflight_job,
    build_service,
    build_training_job,
)
from kubetune.controller.observe import JobRecord, JobState, PodRecord, PodState, WorkloadState
from kubetune.controller.settings import Settings
from kubetune.controller.sizing import size_job
from kubetune.controller.status import (
    IMMUTABLE_SPEC_CHANGED,
    Assessment,
    Outcome,
    SpecDrift,
    assess_attempt,
    assess_preflight,
    invalid_status,
    next_status,
    next_step,
    validity_after_finish,
)

# ----------------------------------------------------------------------------- what is there


@dataclass(frozen=True)
class Attempt:
    """One Job of the FineTuneJob (a training attempt or the preflight) and its pods."""

    job: JobState
    pods: tuple[PodState, ...] = ()
    workload: WorkloadState | None = None
    """Kueue's Workload for the Job, when the job is queued."""

    @property
    def rank0_address(self) -> str | None:
        """Where rank 0 serves its progress: the IP of the attempt's running pod of index 0."""
        return next((p.address for p in self.pods if p.index == 0 and p.phase == "Running" and p.address), None)


@dataclass(frozen=True)
class Snapshot:
    """What the operator read of a FineTuneJob's children. The ConfigMap and the Service are
    not read: they are created (or found to exist) whenever a Job is about to be created."""

    preflight: Attempt | None = None
    attempts: dict[int, Attempt] = field(default_factory=dict)
    """Training attempts by number."""

    @property
    def started_spec(self) -> dict[str, Any] | None:
        """The spec as the job started (but for suspend), as its Jobs record it."""
        jobs = [self.preflight, *self.attempts.values()]
        return next((a.job.started_spec for a in jobs if a is not None and a.job.started_spec is not None), None)


def assemble(
    jobs: Iterable[JobRecord], pods: Iterable[PodRecord], workloads: Mapping[str, WorkloadState] | None = None
) -> Snapshot:
    """The snapshot of one FineTuneJob's Jobs, each with its pods (by the owner uid they name,
    or by their job-name label when they name none) and its Kueue Workload (by owner uid)."""
    pods_by_job: dict[str, list[PodState]] = defaultdict(list)
    for pod in pods:
        pods_by_job[pod.job].append(pod.state)
    attempts, preflight = {}, None
    for job in jobs:
        attempt = Attempt(
            job.state,
            tuple(pods_by_job.get(job.uid, []) + pods_by_job.get(job.state.name, [])),
            (workloads or {}).get(job.uid),
        )
        if job.role == "preflight":
            preflight = attempt
        elif job.role == "train":
            attempts[job.state.attempt] = attempt
    return Snapshot(preflight=preflight, attempts=attempts)


def expected_job_missing(status: FineTuneJobStatus, snapshot: Snapshot) -> bool:
    """The status says a Job exists that the snapshot lacks: the current attempt's, or the
    preflight's before the first attempt. Either the operator stopped between counting it
    and creating it, or what the watch delivered is behind; only a read can tell. A finished
    job's Jobs may be gone (its TTL), so it expects none."""
    if status.start_time is None or status.phase.finished:
        return False
    current = status.attempts + status.preemptions
    if current == 0:
        return snapshot.preflight is None
    return current not in snapshot.attempts


def ended_jobs(snapshot: Snapshot) -> frozenset[str]:
    """The Jobs of the snapshot that have ended (complete, or failed with a reason). What the
    operator decides at a Job's end cannot be taken back (an attempt counted, or not, as a
    preemption), and it reads the end's pods: their disruption conditions come on the pods'
    watch, the end on the Jobs', and the two streams keep no order between them."""
    jobs = [a.job for a in (snapshot.preflight, *snapshot.attempts.values()) if a is not None]
    return frozenset(j.name for j in jobs if j.complete or j.failed_reason is not None)


# ----------------------------------------------------------------------------- what to do


@dataclass(frozen=True)
class Create:
    manifest: Manifest


@dataclass(frozen=True)
class Delete:
    kind: str
    """Job, ConfigMap or Service."""
    name: str


@dataclass(frozen=True)
class SetSuspend:
    """Suspend or resume a Job the operator owns the `suspend` field of (not queued ones)."""

    job: str
    suspend: bool


@dataclass(frozen=True)
class SetWorkloadActive:
    """Kueue owns a queued Job's `suspend`; the operator (de)activates its Workload instead."""

    workload: str
    active: bool


@dataclass(frozen=True)
class WriteStatus:
    status: FineTuneJobStatus


@dataclass(frozen=True)
class Emit:
    """A Kubernetes Event on the FineTuneJob."""

    warning: bool
    reason: str
    message: str


Action = Create | Delete | SetSuspend | SetWorkloadActive | WriteStatus | Emit


# ----------------------------------------------------------------------------- the decision


def plan(
    body: dict[str, Any],
    snapshot: Snapshot,
    settings: Settings,
    now: datetime,
    progress: Progress | None = None,
) -> list[Action]:
    """Every action that brings the cluster closer to what the FineTuneJob asks for."""
    meta = body.get("metadata") or {}
    generation = int(meta.get("generation") or 1)
    previous = read_status(body)
    body, drift = in_force(body, snapshot, previous)
    try:
        job = parse_finetunejob(body)
    except InvalidSpec as error:
        return _refuse(previous, error.problems, "InvalidSpec", generation, now)
    refused = admission_problems(job.spec, settings)
    if refused:
        return _refuse(previous, refused, "NotAllowed", generation, now)
    if previous.start_time is not None and previous.phase.finished:
        return _validity_after_finish(previous, snapshot, generation, drift, now) + _after_finish(
            job, snapshot, previous, now
        )
    preflight_passed = snapshot.preflight is not None and snapshot.preflight.job.complete
    reported = previous.model_facts or reported_facts(snapshot.preflight)
    first_sized_from_facts = needs_model_facts(job.spec) and previous.model_facts is None and reported is not None
    try:
        job, sized = effective_job(job, settings, reported, preflight_passed)
    except NotBuildable as error:
        return _refuse(previous, [Problem("spec.resources.accelerators", str(error))], "DoesNotFit", generation, now)
    if previous.start_time is None:
        previous = FineTuneJobStatus()  # a job that was refused before and is valid now starts afresh
    if first_sized_from_facts:
        previous = previous.model_copy(update={"model_facts": reported})  # kept: a restart sizes the same
    planner = _Planner(
        Context(job, settings),
        snapshot,
        previous,
        generation,
        now,
        progress,
        sized,
        drift,
        started_spec(body["spec"]),
        respec=first_sized_from_facts,
    )
    return _events_last(planner.actions())


def _events_last(actions: list[Action]) -> list[Action]:
    """Events tell a person what happened; they wait until it has (a Job is created sooner)."""
    return [a for a in actions if not isinstance(a, Emit)] + [a for a in actions if isinstance(a, Emit)]


def effective_job(
    job: FineTuneJob, settings: Settings, reported: ModelFacts | None = None, preflight_passed: bool = False
) -> tuple[FineTuneJob, str]:
    """The job as this installation runs it: the default Kueue queue when it names none, and
    accelerators chosen when it says auto (with the sentence saying what was chosen).
    A model that is not a preset is sized from the facts its preflight `reported`; until the
    preflight has passed, the job stays unsized (the preflight needs no accelerator).
    `kubetune render` shows the same."""
    if settings.default_queue and job.spec.queue_name is None:
        job = job.model_copy(update={"spec": job.spec.model_copy(update={"queue_name": settings.default_queue})})
    if needs_model_facts(job.spec) and reported is None and job.spec.dataset.preflight and not preflight_passed:
        return job, ""
    return size_job(job, settings, reported)


def reported_facts(preflight: Attempt | None) -> ModelFacts | None:
    """What a preflight that passed read of the model (its pod's summary); None before, or
    when it reported none (a preset, or a job that sized itself)."""
    if preflight is None or not preflight.job.complete:
        return None
    # Facts that did not validate were left out when the summary was parsed: sizing then
    # says that no facts came.
    return next((pod.summary.model_facts for pod in preflight.pods if pod.summary.model_facts is not None), None)


MUTABLE_SPEC_FIELDS = frozenset({"suspend"})
"""What may change once a job has started; the CRD's CEL rules forbid the rest."""


def started_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The part of a spec that is fixed once the job has started, as recorded at the start."""
    return {key: value for key, value in spec.items() if key not in MUTABLE_SPEC_FIELDS}


def in_force(
    body: dict[str, Any], snapshot: Snapshot, status: FineTuneJobStatus
) -> tuple[dict[str, Any], SpecDrift | None]:
    """The FineTuneJob as the operator runs it: as written until it starts, then with the spec
    its Jobs record (see as_started). Everything that reads the spec for a started job reads
    this one."""
    if status.start_time is None or snapshot.started_spec is None:
        return body, None
    return as_started(body, snapshot.started_spec, status.observed_generation)


def as_started(
    body: dict[str, Any], started: dict[str, Any], training_generation: int | None
) -> tuple[dict[str, Any], SpecDrift | None]:
    """The FineTuneJob with the spec it started with, and what changed since, where an API
    server without the CEL rules let an edit of a fixed field through: the pods train the
    started spec and every retry mounts it, so the operator plans from it too (suspend
    still follows the edit)."""
    spec = body.get("spec") or {}
    changed = sorted(
        key for key in set(spec) | set(started) if key not in MUTABLE_SPEC_FIELDS and spec.get(key) != started.get(key)
    )
    if not changed:
        return body, None
    kept = {**started, **{key: spec[key] for key in MUTABLE_SPEC_FIELDS if key in spec}}
    drift = SpecDrift(tuple(f"spec.{key}" for key in changed), training_generation)
    return {**body, "spec": kept}, drift


def seconds_to_next_look(
    body: dict[str, Any], snapshot: Snapshot, status: FineTuneJobStatus, settings: Settings, now: datetime
) -> float:
    """How long a job may be left alone when none of its children changes: a running job
    until its progress is due, others until their deadline or TTL runs out (the spec's in
    force: an edit under a started job moves neither), at most the resync period (a safety
    net; changes wake the operator at once)."""
    if status.phase is Phase.RUNNING:
        return settings.progress_interval_seconds
    spec = in_force(body, snapshot, status)[0].get("spec") or {}
    waits = [settings.resync_seconds]
    deadline, ttl = spec.get("activeDeadlineSeconds"), spec.get("ttlSecondsAfterFinished")
    if isinstance(deadline, int) and status.start_time is not None and not status.phase.finished:
        waits.append((status.start_time + timedelta(seconds=deadline) - now).total_seconds())
    if isinstance(ttl, int) and status.completion_time is not None and status.phase.finished:
        waits.append((status.completion_time + timedelta(seconds=ttl) - now).total_seconds())
    return max(0.1, min(waits))


def read_status(body: dict[str, Any]) -> FineTuneJobStatus:
    """The status as stored; one the operator cannot read (edited by hand) counts as empty."""
    try:
        return FineTuneJobStatus.model_validate(body.get("status") or {})
    except ValueError:
        return FineTuneJobStatus()


def _refuse(
    previous: FineTuneJobStatus, problems: Sequence[Problem], reason: str, generation: int, now: datetime
) -> list[Action]:
    """A job that may not run: Failed with every problem by field path, and no children."""
    refused = invalid_status(problems, generation, now, reason)
    before = _failure_of(previous)
    if before is not None and before == (reason, refused.conditions[-1].message):
        return []
    return [WriteStatus(refused), Emit(True, reason, refused.conditions[-1].message)]


def _failure_of(status: FineTuneJobStatus) -> tuple[str, str] | None:
    failed = next((c for c in status.conditions if c.type == ConditionType.FAILED and c.status == "True"), None)
    return (failed.reason, failed.message) if failed is not None else None


def _validity_after_finish(
    previous: FineTuneJobStatus, snapshot: Snapshot, generation: int, drift: SpecDrift | None, now: datetime
) -> list[Action]:
    """The Valid condition of a finished job follows an edit of a fixed field, or its undoing,
    for as long as the Jobs that record the started spec are there (after the TTL removed them
    nothing can be compared, and the condition stays as it was)."""
    if snapshot.started_spec is None:
        return []
    status = validity_after_finish(previous, generation, drift, now)
    if not _differs(status, previous):
        return []
    actions: list[Action] = [WriteStatus(status)]
    valid = next(c for c in status.conditions if c.type == ConditionType.VALID)
    if drift is not None and valid.message != next(
        (c.message for c in previous.conditions if c.type == ConditionType.VALID), None
    ):
        actions.append(Emit(True, IMMUTABLE_SPEC_CHANGED, valid.message))
    return actions


def _after_finish(job: FineTuneJob, snapshot: Snapshot, previous: FineTuneJobStatus, now: datetime) -> list[Action]:
    """A finished job keeps its children until its TTL runs out; then they go, the job stays."""
    ttl = job.spec.ttl_seconds_after_finished
    if ttl is None or previous.completion_time is None or now < previous.completion_time + timedelta(seconds=ttl):
        return []
    jobs = [attempt.job.name for attempt in snapshot.attempts.values()]
    if snapshot.preflight is not None:
        jobs.append(snapshot.preflight.job.name)
    if not jobs:
        return []  # cleaned up already
    name = job.metadata.name or ""
    # The ConfigMap and Service first: a restart between the deletions still finds a Job,
    # and so deletes what is left.
    shared = [Delete("ConfigMap", names.config_map_name(name)), Delete("Service", names.service_name(name))]
    return [*shared, *(Delete("Job", job_name) for job_name in jobs)]


@dataclass
class _Planner:
    context: Context
    snapshot: Snapshot
    previous: FineTuneJobStatus
    generation: int
    now: datetime
    progress: Progress | None
    sized: str = ""
    """How the operator sized an `accelerators: auto` job, for the first attempt's message."""
    drift: SpecDrift | None = None
    """Fixed fields edited after the start (the plan is made from the started spec)."""
    started: dict[str, Any] = field(default_factory=dict)
    """The spec as written (but for suspend), recorded on each Job made for the job."""
    respec: bool = False
    """The job was sized from the preflight's facts just now: the spec ConfigMap, made for the
    preflight before the size was known, is made again before the training Job reads it."""
    planned: list[Action] = field(default_factory=list)

    @property
    def spec(self) -> Any:
        return self.context.spec

    def actions(self) -> list[Action]:
        self._tell_of_drift()
        if self._deadline_passed():
            return self.planned
        current = self.previous.attempts + self.previous.preemptions
        if current == 0:
            if self.spec.dataset.preflight and not self._preflight_passed():
                return self.planned
            self._start_attempt(Assessment(Outcome.PENDING, "Creating", self.sized), counts=True)
            return self.planned
        attempt = self.snapshot.attempts.get(current)
        if attempt is None:  # counted, then the operator stopped before creating it; or deleted by hand
            self._remove_failed_attempts(current)
            self._shared_children()
            self.planned.append(Create(self._training_job(current)))
            self._report(Assessment(Outcome.PENDING, "Creating", "creating the training Job"))
            return self.planned
        self._follow_suspend(attempt)
        step = next_step(assess_attempt(attempt.job, attempt.pods, self.spec), self.spec, self.previous)
        assert step.assessment is not None
        if step.start_attempt:
            # The failed attempt's Job stays (its pods stopped, their logs readable), within the bound.
            self._remove_failed_attempts(current + 1)
            self._emit(step.assessment)
            self._start_attempt(step.assessment, counts=step.counts)
        else:
            self._remove_failed_attempts(current)
            self._report(step.assessment)
        return self.planned

    # --------------------------------------------------------------------- pieces

    def _shared_children(self) -> None:
        """The spec ConfigMap and the rendezvous Service, before any Job that needs them
        (creating one that exists is a no-op)."""
        self.planned.append(Create(build_config_map(self.context)))
        self.planned.append(Create(build_service(self.context)))

    def _deadline_passed(self) -> bool:
        """activeDeadlineSeconds bounds the whole job, across attempts and suspensions (a Job's
        own deadline starts again at every resume)."""
        limit, started = self.spec.active_deadline_seconds, self.previous.start_time
        if limit is None or started is None or self.now < started + timedelta(seconds=limit):
            return False
        for attempt in self._live_jobs():
            self.planned.append(Delete("Job", attempt.job.name))
        self._report(
            Assessment(Outcome.FAILED, "DeadlineExceeded", f"the job ran longer than activeDeadlineSeconds={limit}")
        )
        return True

    def _live_jobs(self) -> list[Attempt]:
        jobs = list(self.snapshot.attempts.values())
        if self.snapshot.preflight is not None:
            jobs.append(self.snapshot.preflight)
        return [a for a in jobs if not a.job.complete and a.job.failed_reason is None]

    def _preflight_passed(self) -> bool:
        preflight = self.snapshot.preflight
        if preflight is None:
            # The job starts with its preflight: from here on the spec is fixed (but for suspend).
            self.previous = self.previous.model_copy(update={"start_time": self.previous.start_time or self.now})
            self._report(
                Assessment(Outcome.PREFLIGHT, "Preflight", "checking and tokenising the dataset on a CPU"), force=True
            )
            self._shared_children()
            self.planned.append(Create(build_preflight_job(self.context, self.started)))
            return False
        self._follow_suspend(preflight)
        assessment = assess_preflight(preflight.job, preflight.pods, self.spec)
        if assessment is None:
            return True
        step = next_step(assessment, self.spec, self.previous)
        assert step.assessment is not None
        if step.start_attempt:
            self._restart_preflight(preflight, step.assessment, counts=step.counts)
            return False
        self._report(step.assessment)
        return False

    def _restart_preflight(self, preflight: Attempt, why: Assessment, counts: bool) -> None:
        """A preflight pod preempted, evicted or drained found nothing wrong with the data: the
        preflight starts again, and nothing is counted (it trained nothing). One that failed
        for a reason another try may not repeat starts again too, counted against maxRetries.
        The failed Job goes first, then the count: a restart in between finds no preflight
        and creates one uncounted, never counts the same failure twice."""
        self.planned.append(Delete("Job", preflight.job.name))
        self._emit(why)
        if counts:
            self.previous = self.previous.model_copy(update={"preflight_retries": self.previous.preflight_retries + 1})
            after = f"after {why.reason}: {why.message}"
        else:
            after = f"after a disruption ({why.message})"
        again = Assessment(Outcome.PREFLIGHT, "Preflight", f"checking the dataset again {after}")
        self._report(again, force=True)
        self._shared_children()
        self.planned.append(Create(build_preflight_job(self.context, self.started)))

    def _remove_failed_attempts(self, current: int) -> None:
        """Jobs of attempts before the current one failed (their reasons are in the status);
        the newest few stay for their logs, the oldest go first."""
        earlier = sorted(number for number in self.snapshot.attempts if number < current)
        kept = self.context.settings.kept_failed_attempts
        for number in earlier[: max(0, len(earlier) - kept)]:
            self.planned.append(Delete("Job", self.snapshot.attempts[number].job.name))

    def _follow_suspend(self, attempt: Attempt) -> None:
        """Make the Job's pods follow spec.suspend. A queued Job's `suspend` belongs to Kueue:
        the operator (de)activates its Workload and never touches the Job."""
        wanted = bool(self.spec.suspend)
        if self.spec.queue_name is None:
            if attempt.job.suspended != wanted and not attempt.job.complete:
                self.planned.append(SetSuspend(attempt.job.name, wanted))
            return
        workload = attempt.workload
        if workload is not None and workload.active == wanted:
            self.planned.append(SetWorkloadActive(workload.name, not wanted))

    def _start_attempt(self, why: Assessment, counts: bool) -> None:
        """Count the attempt in the status first, then create its Job (see the module doc)."""
        update: dict[str, Any] = {"start_time": self.previous.start_time or self.now}
        if counts:
            update["attempts"] = self.previous.attempts + 1
        else:
            update["preemptions"] = self.previous.preemptions + 1
        number = self.previous.attempts + self.previous.preemptions + 1
        if self.respec:
            # Before the status that counts the attempt: a restart in between deletes it again.
            self.planned.append(Delete("ConfigMap", names.config_map_name(self.context.name)))
        self.previous = self.previous.model_copy(update=update)
        if number > 1:
            message = f"attempt {number} after {why.reason}: {why.message}"
        else:
            message = "; ".join(filter(None, ["creating the training Job", why.message]))
        started = Assessment(
            Outcome.QUEUED if why.outcome is Outcome.PREEMPTED else Outcome.PENDING,
            "Retrying" if number > 1 else "Creating",
            message,
        )
        self._report(started, force=True)
        self._shared_children()
        self.planned.append(Create(self._training_job(number)))

    def _training_job(self, number: int) -> Manifest:
        limit, started = self.spec.active_deadline_seconds, self.previous.start_time
        remaining = None
        if limit is not None and started is not None:
            remaining = max(1, int(limit - (self.now - started).total_seconds()))
        return build_training_job(self.context, number, deadline_seconds=remaining, started=self.started)

    def _report(self, assessment: Assessment, force: bool = False) -> None:
        """Write the status that follows, when it differs from what is stored; emit an Event
        when the reason changes."""
        progress = self.progress if assessment.outcome is Outcome.RUNNING else None
        status = next_status(
            self.previous,
            self.generation,
            assessment,
            self.now,
            progress=progress,
            model=self.spec.model.display,
            method=self.spec.method.type,
            drift=self.drift,
        )
        if force or _differs(status, self.previous):
            self.planned.append(WriteStatus(status))
        if _reason_of(self.previous) != assessment.reason:
            self._emit(assessment)
        self.previous = status

    def _tell_of_drift(self) -> None:
        """A Warning once, when fixed fields are found edited (the Valid condition keeps saying it)."""
        if self.drift is None:
            return
        valid = next((c for c in self.previous.conditions if c.type == ConditionType.VALID), None)
        told = valid is not None and valid.status == ConditionStatus.FALSE and valid.message == self.drift.message
        if not told:
            self.planned.append(Emit(True, IMMUTABLE_SPEC_CHANGED, self.drift.message))

    def _emit(self, assessment: Assessment) -> None:
        warning = assessment.outcome in (Outcome.FAILED, Outcome.RETRY, Outcome.PREEMPTED) or assessment.reason in (
            "Unschedulable",
            "MissingReference",
        )
        message = assessment.message or assessment.reason
        if assessment.outcome is Outcome.SUCCEEDED and assessment.summary.output is not None:
            message = f"{message}; output at {assessment.summary.output.location}"
        self.planned.append(Emit(warning, assessment.reason, message))


def _reason_of(status: FineTuneJobStatus) -> str | None:
    """The reason of the last assessment: the Running condition carries it whether it holds
    or not; a refused job has only its Failed condition."""
    by_type = {c.type: c for c in status.conditions}
    shown = by_type.get(ConditionType.RUNNING) or by_type.get(ConditionType.FAILED)
    return shown.reason if shown is not None else None


def _differs(new: FineTuneJobStatus, old: FineTuneJobStatus) -> bool:
    keep = {"kopf"}
    return new.model_dump(exclude=keep) != old.model_dump(exclude=keep)
