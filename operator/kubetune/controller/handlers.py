"""The Kopf program: thin handlers over the planner (`reconcile.plan`) and the cluster
adapter (`cluster.Cluster`).

One daemon per FineTuneJob keeps it true: it reads the FineTuneJob and its children,
plans, applies the plan, and sleeps until a child changes or the progress interval
passes. Events on the children only wake their job's daemon; they decide nothing. All
writes for a job come from its one daemon, so they never race each other, and a restarted
operator picks up where the last one stopped (the decisions depend on the cluster only).

Run it with `kubetune operator` (settings from the environment, see `Settings.from_env`),
or `kopf run -m kubetune.controller.handlers`.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from kubetune.api import GROUP, VERSION, Phase
from kubetune.api.resource import PLURAL
from kubetune.controller import names
from kubetune.controller.builders import JOB_LABEL
from kubetune.controller.cluster import KINDS, Cluster, fetch_progress
from kubetune.controller.metrics import Metrics
from kubetune.controller.observe import progress_from_report
from kubetune.controller.reconcile import Snapshot, WriteStatus, plan, read_status, seconds_to_next_look
from kubetune.controller.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class OperatorState:
    """What every handler shares; given to Kopf as its memo."""

    settings: Settings
    cluster: Cluster
    metrics: Metrics = field(default_factory=Metrics)
    wakers: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    """One per running daemon, keyed by namespace and the job's label value."""
    generations: dict[tuple[str, str], int] = field(default_factory=dict)
    """The spec generation each job's daemon last woke for."""

    def wake(self, namespace: str | None, label: str | None) -> None:
        waker = self.wakers.get((namespace or "", label or ""))
        if waker is not None:
            waker.set()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    # The API calls run in threads (the client blocks); one pool sized for many jobs at once.
    workers = memo.state.settings.api_workers
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(workers, thread_name_prefix="kubetune-api"))
    # Kopf keeps its bookkeeping in status.kopf (the CRD preserves it): no annotations to write.
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.last-handled-configuration")
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.posting.enabled = False  # kubetune records its own Events, with reasons a person can act on
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=5.0)
async def keep_job_true(
    namespace: str | None, name: str, body: kopf.Body, memo: Any, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    state: OperatorState = memo.state
    namespace = namespace or "default"
    waker = state.wakers.setdefault((namespace, names.label_value(name)), asyncio.Event())
    polled = 0.0
    # The first pass plans from the object Kopf just delivered; later ones read it afresh
    # (Kopf's copy lags behind the operator's own writes).
    delivered: dict[str, Any] | None = copy.deepcopy(dict(body))
    try:
        while not stopped:
            waker.clear()
            poll_progress = time.monotonic() - polled >= state.settings.progress_interval_seconds
            try:
                given, delivered = delivered, None  # a failed pass reads afresh
                did_poll, pause = await reconcile(state, namespace, name, poll_progress, given)
                if did_poll:
                    polled = time.monotonic()
            except ApiException as error:
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
                state.metrics.api_errors.labels(status="none").inc()
                pause = state.settings.error_backoff_seconds
                log.exception("reconciling %s/%s failed; trying again in %.1f s", namespace, name, pause)
            await _sleep(waker, stopped, pause)
    finally:
        state.wakers.pop((namespace, names.label_value(name)), None)
        state.generations.pop((namespace, names.label_value(name)), None)
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


async def _sleep(waker: asyncio.Event, stopped: kopf.DaemonStopped, seconds: float) -> None:
    """Until a child changes, the operator stops, or the time is up."""
    woken = asyncio.ensure_future(waker.wait())
    stopping = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait([woken, stopping], timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        woken.cancel()
        stopping.cancel()


async def reconcile(
    state: OperatorState, namespace: str, name: str, poll_progress: bool, body: dict[str, Any] | None = None
) -> tuple[bool, float]:
    """One pass: read, plan, apply. Whether it polled the trainer's progress, and how long
    the job may be left alone now."""
    started = time.monotonic()
    cluster = state.cluster
    if body is None:
        try:
            body = await asyncio.to_thread(cluster.rest.call, "GET", KINDS["FineTuneJob"].path(namespace, name))
        except ApiException as error:
            if error.status == 404:
                return False, state.settings.resync_seconds  # deleted; Kopf stops the daemon
            raise
    spec = body.get("spec") or {}
    queued = bool(spec.get("queueName") or state.settings.default_queue)
    previous = read_status(body)
    if previous.start_time is None:
        snapshot = Snapshot()  # nothing is created before the status says the job started
    else:
        snapshot = await asyncio.to_thread(cluster.snapshot, namespace, name, queued)
    progress, polled = None, False
    current = previous.attempts + previous.preemptions
    if poll_progress and previous.phase is Phase.RUNNING and current in snapshot.attempts:
        address = snapshot.attempts[current].rank0_address
        if address:
            report = await asyncio.to_thread(fetch_progress, address, state.settings.progress_port)
            progress, polled = progress_from_report(report), True
    actions = plan(body, snapshot, state.settings, datetime.now(UTC), progress)
    await asyncio.to_thread(cluster.apply, body, actions)
    written = next((a.status for a in reversed(actions) if isinstance(a, WriteStatus)), previous)
    state.metrics.observe(namespace, name, written.phase, time.monotonic() - started)
    return polled, seconds_to_next_look(body, written, state.settings, datetime.now(UTC))


@kopf.on.event(GROUP, VERSION, PLURAL)
def job_changed(namespace: str | None, name: str | None, meta: Mapping[str, Any], memo: Any, **_: Any) -> None:
    """A spec change (suspend, an edit before the start) is acted on at once; the operator's
    own status writes, which change no generation, wake nothing."""
    state: OperatorState = memo.state
    key = (namespace or "", names.label_value(name or ""))
    generation = int(meta.get("generation") or 0)
    if state.generations.get(key) != generation or meta.get("deletionTimestamp"):
        state.generations[key] = generation
        state.wake(*key)


@kopf.on.event("batch", "v1", "jobs", labels={JOB_LABEL: kopf.PRESENT})
@kopf.on.event("", "v1", "pods", labels={JOB_LABEL: kopf.PRESENT})
def child_changed(namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any) -> None:
    memo.state.wake(namespace, labels.get(JOB_LABEL))


@kopf.on.probe(id="jobs")
def jobs_watched(memo: Any, **_: Any) -> int:
    return len(memo.state.wakers)


# ----------------------------------------------------------------------------- running it


def api_client() -> ApiClient:
    """Credentials the way a pod or a person has them: in-cluster, else the kubeconfig."""
    from kubernetes import config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return ApiClient()


def memo_for(settings: Settings, client: ApiClient) -> kopf.Memo:
    memo = kopf.Memo()
    memo.state = OperatorState(settings, Cluster(client))
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
