"""The Kopf program: thin handlers over the planner (`reconcile.plan`) and the cluster
adapter (`cluster.Cluster`).

One keeper per FineTuneJob keeps it true: a task of the operator's own that plans from
the FineTuneJob and its children, applies the plan, and sleeps until a child changes or
the progress interval passes. Kopf's watch events start, wake or stop keepers and feed the
index of children (`index.ChildIndex`) the keepers plan from; they decide nothing. A
keeper goes to the API server to write, and to read only when what it knows may be stale
(its first look at a started job, a failed or conflicting pass, a Job the status counts
that the index lacks, and every resync period). All writes for a job come from its one
keeper, so they never race each other, and a restarted operator picks up where the last
one stopped (the decisions depend on the cluster only).

A keeper is not a Kopf daemon: a daemon makes Kopf write a finalizer onto every object
(one more request and one more watch event per job) and costs more memory per job. The
children need no finalizer: they carry owner references, and the garbage collector takes
them with the FineTuneJob.

Run it with `kubetune operator` (settings from the environment, see `Settings.from_env`),
or `kopf run -m kubetune.controller.handlers`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException

from kubetune.api import GROUP, VERSION, Phase
from kubetune.api.resource import PLURAL
from kubetune.api.status import FineTuneJobStatus
from kubetune.controller import names
from kubetune.controller.builders import JOB_LABEL
from kubetune.controller.cluster import KINDS, AsyncRest, Cluster, fetch_progress
from kubetune.controller.index import ChildIndex
from kubetune.controller.metrics import Metrics
from kubetune.controller.observe import progress_from_report
from kubetune.controller.reconcile import (
    Snapshot,
    WriteStatus,
    ended_jobs,
    expected_job_missing,
    plan,
    read_status,
    seconds_to_next_look,
)
from kubetune.controller.settings import Settings

log = logging.getLogger(__name__)

Key = tuple[str, str]
"""A job's namespace and the value of its children's job label."""


@dataclass
class Keeper:
    """What one job's keeper holds between its passes."""

    name: str
    generation: int
    body: str | None
    """The FineTuneJob as the operator last knew it, in JSON (a fifth of the memory of the
    parsed object): as Kopf delivered it, then as the operator's own status write returned
    it; None when it must be read afresh (the spec changed, or a pass failed). A body that
    is stale all the same costs no wrong decision: status writes carry its resourceVersion,
    and a conflict makes the next pass read."""
    listed_at: float | None = None
    """When the job's children were last read from the API (monotonic), or found to be none;
    None when the index may be stale for the job (a new keeper, a failed pass)."""
    confirmed_ended: frozenset[str] = frozenset()
    """The ended Jobs a read from the API has shown: a Job the index shows ended that is not
    here is read afresh, with its pods, before the keeper plans from its end."""
    waker: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


@dataclass
class OperatorState:
    """What every handler shares; given to Kopf as its memo."""

    settings: Settings
    cluster: Cluster
    metrics: Metrics = field(default_factory=Metrics)
    keepers: dict[Key, Keeper] = field(default_factory=dict)
    index: ChildIndex = field(default_factory=ChildIndex)
    passes: asyncio.Semaphore = field(init=False)
    """Passes under way at once: as many as there are connections, so a thousand jobs started
    together do not all hold their plans while they wait for one."""

    def __post_init__(self) -> None:
        self.passes = asyncio.Semaphore(self.settings.api_workers)

    def wake(self, namespace: str | None, label: str | None) -> None:
        keeper = self.keepers.get((namespace or "", label or ""))
        if keeper is not None:
            keeper.waker.set()

    def keep(self, namespace: str, name: str, generation: int, body: Mapping[str, Any]) -> None:
        """Start the job's keeper, or wake it for a new generation of the spec."""
        key = (namespace, names.label_value(name))
        keeper = self.keepers.get(key)
        if keeper is None:
            keeper = self.keepers[key] = Keeper(name, generation, json.dumps(body))
            keeper.task = asyncio.get_running_loop().create_task(keep_job_true(self, namespace, keeper))
        elif keeper.generation != generation:
            keeper.generation, keeper.body = generation, None
            keeper.waker.set()

    async def release(self, namespace: str, name: str) -> None:
        """Stop the job's keeper (the job is being deleted)."""
        key = (namespace, names.label_value(name))
        keeper = self.keepers.pop(key, None)
        self.index.release(key)
        if keeper is not None and keeper.task is not None:
            keeper.task.cancel()
            await asyncio.gather(keeper.task, return_exceptions=True)


class EventsOnlyDiffBase(kopf.StatusDiffBaseStorage):
    """Kopf's last-handled state, for an operator with event handlers only.

    Kopf builds the state it compares for change handlers (a deep copy of the object) on
    every event of every object it watches, Jobs and Pods included; kubetune has no change
    handlers (nor daemons), so the copy is never compared, and the profile of a 500-job run
    found a third of Kopf's time per event in it. Nothing is built, so nothing is stored."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    # Kopf keeps its bookkeeping in status.kopf (the CRD preserves it): no annotations to write.
    settings.persistence.diffbase_storage = EventsOnlyDiffBase(field="status.kopf.last-handled-configuration")
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.posting.enabled = False  # kubetune records its own Events, with reasons a person can act on
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


@kopf.on.cleanup()
async def stop_keepers(memo: Any, **_: Any) -> None:
    state: OperatorState = memo.state
    keepers = list(state.keepers.values())
    for keeper in keepers:
        if keeper.task is not None:
            keeper.task.cancel()
    await asyncio.gather(*(k.task for k in keepers if k.task is not None), return_exceptions=True)
    if state.cluster is not None:
        await state.cluster.rest.close()


async def keep_job_true(state: OperatorState, namespace: str, keeper: Keeper) -> None:
    """Plan and apply until the keeper is cancelled (the job is deleted or the operator stops)."""
    name, polled = keeper.name, 0.0
    try:
        while True:
            keeper.waker.clear()
            poll_progress = time.monotonic() - polled >= state.settings.progress_interval_seconds
            try:
                async with state.passes:
                    did_poll, pause = await reconcile(state, namespace, keeper, poll_progress)
                if did_poll:
                    polled = time.monotonic()
            except ApiException as error:
                keeper.body, keeper.listed_at = None, None  # the next pass reads afresh
                state.metrics.api_errors.labels(status=str(error.status)).inc()
                pause = _backoff(error, state.settings.error_backoff_seconds)
                log.log(
                    logging.DEBUG if error.status == 409 else logging.WARNING,
                    "reconciling %s/%s: the API answered %s %s; trying again in %.1f s",
                    namespace,
                    name,
                    error.status,
                    error.reason,
                    pause,
                )
            except Exception:  # a lost connection, or a bug: logged, and the next pass tries again
                keeper.body, keeper.listed_at = None, None
                state.metrics.api_errors.labels(status="none").inc()
                pause = state.settings.error_backoff_seconds
                log.exception("reconciling %s/%s failed; trying again in %.1f s", namespace, name, pause)
            await _sleep(keeper.waker, pause)
    finally:
        state.metrics.forget(namespace, name)


def _backoff(error: ApiException, default: float) -> float:
    """A conflict (someone wrote in between) is read again at once; an answer that says when
    to come back (429, 503) is followed; anything else waits the default."""
    if error.status == 409:
        return 0.1
    retry_after = (error.headers or {}).get("Retry-After")
    try:
        return max(0.1, float(retry_after)) if retry_after else default
    except ValueError:
        return default


async def _sleep(waker: asyncio.Event, seconds: float) -> None:
    """Until a child changes or the time is up (a deletion or a stop cancels the keeper)."""
    try:
        async with asyncio.timeout(seconds):
            await waker.wait()
    except TimeoutError:
        pass


async def reconcile(state: OperatorState, namespace: str, keeper: Keeper, poll_progress: bool) -> tuple[bool, float]:
    """One pass: read what is not known, plan, apply. Whether it polled the trainer's
    progress, and how long the job may be left alone now."""
    started = time.monotonic()
    cluster, name = state.cluster, keeper.name
    if keeper.body is not None:
        body: dict[str, Any] = json.loads(keeper.body)
    else:
        try:
            body = await cluster.rest.call("GET", KINDS["FineTuneJob"].path(namespace, name))
        except ApiException as error:
            if error.status == 404:
                return False, state.settings.resync_seconds  # deleted; its DELETED event stops the keeper
            raise
        keeper.body = json.dumps(body)
    previous = read_status(body)
    snapshot = await children(state, namespace, keeper, previous)
    progress, polled = None, False
    current = previous.attempts + previous.preemptions
    if poll_progress and previous.phase is Phase.RUNNING and current in snapshot.attempts:
        address = snapshot.attempts[current].rank0_address
        if address:
            report = await fetch_progress(cluster.rest, address, state.settings.progress_port)
            progress, polled = progress_from_report(report), True
    actions = plan(body, snapshot, state.settings, datetime.now(UTC), progress)
    applied = await cluster.apply(body, actions)
    key = (namespace, names.label_value(name))
    for job in applied.created_jobs:
        state.index.created(key, job)
    for job_name in applied.deleted_jobs:
        state.index.deleted(key, job_name)
    if applied.created_jobs or applied.deleted_jobs:
        keeper.waker.set()  # the index changed without an event to wake the keeper: plan again from it
    if applied.adopted:
        keeper.listed_at = None  # a Job it meant to create was there: read what else it missed
    if applied.written is not None:
        keeper.body = json.dumps(applied.written)  # what the API holds now, the status just written included
    written = next((a.status for a in reversed(actions) if isinstance(a, WriteStatus)), previous)
    state.metrics.observe(namespace, name, written.phase, time.monotonic() - started)
    return polled, seconds_to_next_look(body, snapshot, written, state.settings, datetime.now(UTC))


async def children(state: OperatorState, namespace: str, keeper: Keeper, status: FineTuneJobStatus) -> Snapshot:
    """The job's children from the index; read from the API first when the index may be
    stale for the job. Kueue's Workloads are not watched: a queued job's are listed."""
    key, now = (namespace, names.label_value(keeper.name)), time.monotonic()
    if status.start_time is None:
        keeper.listed_at = now  # nothing is created before the status says the job started
        return Snapshot()
    fresh = keeper.listed_at is not None and now - keeper.listed_at < state.settings.resync_seconds
    known = state.index.snapshot(key)
    if not fresh or expected_job_missing(status, known) or not ended_jobs(known) <= keeper.confirmed_ended:
        since = state.index.last
        jobs, pods = await state.cluster.children(namespace, keeper.name)
        state.index.replace(key, jobs, pods, since)
        keeper.listed_at = now
        keeper.confirmed_ended = ended_jobs(state.index.snapshot(key))
    workloads = None
    if state.index.queued(key):
        workloads = await state.cluster.workloads(namespace)
    return state.index.snapshot(key, workloads)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def job_changed(
    event: kopf.RawEvent, namespace: str | None, name: str | None, meta: Mapping[str, Any], memo: Any, **_: Any
) -> None:
    """Every FineTuneJob seen (created, or listed at start) gets its keeper; a spec change
    (suspend, an edit before the start) wakes it at once; the operator's own status writes,
    which change no generation, wake nothing; a deletion stops it."""
    state: OperatorState = memo.state
    namespace, name = namespace or "default", name or ""
    if event.get("type") == "DELETED" or meta.get("deletionTimestamp"):
        await state.release(namespace, name)
        return
    state.keep(namespace, name, int(meta.get("generation") or 0), event["object"])


@kopf.on.event("batch", "v1", "jobs", labels={JOB_LABEL: kopf.PRESENT})
async def job_child_changed(
    event: kopf.RawEvent, namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any
) -> None:
    """A Job of a FineTuneJob: its facts into the index, and its keeper woken when they changed."""
    state: OperatorState = memo.state
    key = (namespace or "", labels.get(JOB_LABEL) or "")
    if state.index.job_event(key, event.get("type"), event["object"]):
        state.wake(*key)


@kopf.on.event("", "v1", "pods", labels={JOB_LABEL: kopf.PRESENT})
async def pod_child_changed(
    event: kopf.RawEvent, namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any
) -> None:
    """A pod of a FineTuneJob's Job: its facts into the index, and its keeper woken when they changed."""
    state: OperatorState = memo.state
    key = (namespace or "", labels.get(JOB_LABEL) or "")
    if state.index.pod_event(key, event.get("type"), event["object"]):
        state.wake(*key)


@kopf.on.probe(id="jobs")
def jobs_watched(memo: Any, **_: Any) -> int:
    return len(memo.state.keepers)


# ----------------------------------------------------------------------------- running it


def api_client() -> ApiClient:
    """Credentials the way a pod or a person has them: in-cluster, else the kubeconfig."""
    from kubernetes import config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return ApiClient(Configuration.get_default_copy())


def memo_for(settings: Settings, client: ApiClient) -> kopf.Memo:
    """The handlers' shared state; the client gives where the API server is and the login."""
    memo = kopf.Memo()
    memo.state = OperatorState(settings, Cluster(AsyncRest(client.configuration, settings.api_workers)))
    return memo


def run(settings: Settings) -> None:
    """`kubetune operator`: watch the settings' namespaces (all when none), serve metrics and
    health, and reconcile until stopped. One replica: Kopf's peering pauses peers, it does
    not elect a leader."""
    kopf.configure(
        debug=settings.log_level == "debug",
        quiet=settings.log_level in ("warning", "error"),
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL,
    )
    memo = memo_for(settings, api_client())
    if settings.metrics_port:
        memo.state.metrics.serve(settings.metrics_port)
    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None,
        memo=memo,
    )
