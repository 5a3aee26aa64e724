"""The operator under faults: transient 409, 429 and 500 answers, dropped watch streams, slow
responses, and the operator stopped and started again at each step of creating children.
Whatever happens, the job converges: exactly one ConfigMap, Service and preflight Job, one
Job per attempt, and a status that agrees with them."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from kubetune.controller.settings import Settings

from .actors import SUCCESS, Cluster, Operator, Progress, _manifest, _through_preflight, eventually
from .conftest import ApiServer

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

Fault = Callable[[ApiServer, Operator], Awaitable[int]]
"""Injects faults before the job is submitted; returns how many it injected."""


def _failing(request: str, plural: str, status: int, times: int, subresource: str | None = None) -> Fault:
    async def inject(apiserver: ApiServer, operator: Operator) -> int:
        apiserver.emulator.fail_next(request, plural, status=status, times=times, subresource=subresource)
        return times

    return inject


def _conflict_then_failing_reads(times: int) -> Fault:
    """The FineTuneJob is read only when what the operator knows of it may be stale: after a
    conflict on its status write, whose re-read then fails."""

    async def inject(apiserver: ApiServer, operator: Operator) -> int:
        apiserver.emulator.fail_next("patch", "finetunejobs", status=409, times=1, subresource="status")
        apiserver.emulator.fail_next("get", "finetunejobs", status=500, times=times)
        return 1 + times

    return inject


async def _dropped_watches(apiserver: ApiServer, operator: Operator) -> int:
    async def keep_dropping() -> None:
        for _ in range(8):
            await asyncio.sleep(0.25)
            apiserver.emulator.drop_watches()

    asyncio.get_running_loop().create_task(keep_dropping())
    return 8


async def _slow(apiserver: ApiServer, operator: Operator) -> int:
    apiserver.emulator.slow(0.05)
    return 1


FAULTS: dict[str, Fault] = {
    "409 on status writes": _failing("patch", "finetunejobs", 409, 3, subresource="status"),
    "429 on creating Jobs": _failing("create", "jobs", 429, 2),
    "500 on creating the ConfigMap": _failing("create", "configmaps", 500, 2),
    "500 on listing Jobs": _failing("list", "jobs", 500, 3),
    "500 on reading the FineTuneJob": _conflict_then_failing_reads(2),
    "dropped watch streams": _dropped_watches,
    "slow answers": _slow,
}


def _creations(apiserver: ApiServer) -> Counter[tuple[str, str | None]]:
    return Counter(
        (w.plural, w.name)
        for w in apiserver.emulator.writes
        if w.method == "POST" and w.plural in ("configmaps", "services", "jobs")
    )


async def _runs_to_success(cluster: Cluster) -> None:
    await _through_preflight(cluster)
    await cluster.start_pods("demo-a1")
    await cluster.finish("demo-a1", 0, SUCCESS)
    await eventually(lambda: cluster.status().get("phase") == "Succeeded", "phase Succeeded", timeout=30)


def _assert_converged(apiserver: ApiServer, cluster: Cluster) -> None:
    assert _creations(apiserver) == Counter(
        {("configmaps", "demo-spec"): 1, ("services", "demo"): 1, ("jobs", "demo-preflight"): 1, ("jobs", "demo-a1"): 1}
    )
    status = cluster.status()
    assert (status["attempts"], status["preemptions"]) == (1, 0)
    assert status["output"]["location"] == "pvc://results/demo"


@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
async def test_the_job_converges_under_api_faults(
    fault: str, operator: Operator, cluster: Cluster, apiserver: ApiServer, job: dict[str, Any]
) -> None:
    injected = await FAULTS[fault](apiserver, operator)

    await cluster.submit(job)
    await _runs_to_success(cluster)

    assert injected > 0
    assert not apiserver.emulator._faults, "every injected failure was answered to someone"
    _assert_converged(apiserver, cluster)


# Where the operator stops: a request that keeps failing holds it there, as if it had died
# at that point; then it stops, and a new one starts with nothing but what the cluster holds.
CRASH_POINTS = {
    "after counting the start": ("create", "configmaps", None, set()),
    "after the ConfigMap": ("create", "services", None, {"configmaps"}),
    "after the Service": ("create", "jobs", None, {"configmaps", "services"}),
}


@pytest.mark.parametrize("point", list(CRASH_POINTS), ids=list(CRASH_POINTS))
async def test_an_operator_stopped_mid_creation_and_restarted_creates_nothing_twice(
    point: str, operator: Operator, cluster: Cluster, apiserver: ApiServer, job: dict[str, Any]
) -> None:
    request, plural, subresource, made = CRASH_POINTS[point]
    apiserver.emulator.fail_next(request, plural, status=500, times=1000, subresource=subresource)
    await cluster.submit(job)
    await eventually(lambda: _tried(apiserver, plural, subresource), f"the operator to reach the step {point}")
    await operator.halt()
    assert {kind for kind, _ in _creations(apiserver)} == made
    apiserver.emulator.clear_faults()

    await operator.start()
    await _runs_to_success(cluster)

    _assert_converged(apiserver, cluster)


async def test_an_operator_stopped_after_creating_the_job_picks_it_up(
    operator: Operator, cluster: Cluster, apiserver: ApiServer, job: dict[str, Any]
) -> None:
    await cluster.submit(job)
    await _through_preflight(cluster)
    await operator.halt()
    await cluster.start_pods("demo-a1")  # the pods run on while no operator watches
    await cluster.finish("demo-a1", 0, SUCCESS)

    await operator.start()
    await eventually(lambda: cluster.status().get("phase") == "Succeeded", "phase Succeeded")

    _assert_converged(apiserver, cluster)


def _tried(apiserver: ApiServer, plural: str, subresource: str | None) -> bool:
    """The operator has tried the request that fails (and so has done everything before it)."""
    return any(
        r.resource is not None
        and r.resource.plural == plural
        and r.subresource == subresource
        and r.headers.get("User-Agent", "").startswith("kubetune-operator/")
        and str(r.method).upper().endswith(("POST", "PATCH"))
        for r in apiserver.emulator._requests
    )


async def test_events_the_watch_never_delivered_are_healed_by_the_resync(
    apiserver: ApiServer, progress: Progress, cluster: Cluster, job: dict[str, Any]
) -> None:
    """The keeper plans from what the watch delivered; the end of the run is lost on the way
    (neither the pod's nor the Job's last change reaches the operator), and the periodic
    fresh read of the job's children finds it."""
    settings = Settings(
        progress_port=progress.port,
        progress_interval_seconds=0.3,
        metrics_port=0,
        health_port=0,
        error_backoff_seconds=0.2,
        resync_seconds=1.0,
    )
    operator = Operator(settings, apiserver)
    await operator.start()
    try:
        await cluster.submit(_manifest(job, dataset={**job["spec"]["dataset"], "preflight": False}))
        await eventually(lambda: "demo-a1" in cluster.jobs(), "attempt 1")
        await cluster.start_pods("demo-a1")
        await eventually(lambda: cluster.status().get("phase") == "Running", "phase Running")

        apiserver.emulator.miss_events("pods", 1)
        apiserver.emulator.miss_events("jobs", 1)
        await cluster.finish("demo-a1", 0, SUCCESS)

        await eventually(lambda: cluster.status().get("phase") == "Succeeded", "phase Succeeded", timeout=10)
    finally:
        await operator.halt()
