"""The Kopf side's own bookkeeping, without a cluster: keepers start, wake, read afresh and
stop as the FineTuneJob's events say, and Kopf builds no diff base per event."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import kopf
import pytest

from kubetune.api.status import FineTuneJobStatus
from kubetune.controller import handlers
from kubetune.controller.builders import ATTEMPT_LABEL, JOB_LABEL, ROLE_LABEL
from kubetune.controller.handlers import EventsOnlyDiffBase, Keeper, OperatorState
from kubetune.controller.observe import job_record
from kubetune.controller.settings import Settings


def _body(generation: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": "demo", "namespace": "ns", "generation": generation}, "spec": {"suspend": False}}


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """Each pass's body as the keeper had it (None: it would read the job afresh)."""
    seen: list[str | None] = []

    async def one_pass(state: OperatorState, namespace: str, keeper: Keeper, poll: bool) -> tuple[bool, float]:
        seen.append(keeper.body)
        keeper.body = '{"written": true}'  # as a status write's answer would
        return False, 60.0

    monkeypatch.setattr(handlers, "reconcile", one_pass)
    return seen


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_a_keeper_starts_with_the_delivered_job_and_keeps_what_it_wrote(passes: list[str | None]) -> None:
    state = OperatorState(Settings(), cluster=None)  # type: ignore[arg-type]
    state.keep("ns", "demo", 1, _body())
    await _settle()
    assert len(passes) == 1 and passes[0] is not None and json.loads(passes[0]) == _body()

    state.keep("ns", "demo", 1, _body())  # its own status write's event: no pass, nothing forgotten
    await _settle()
    assert len(passes) == 1 and len(state.keepers) == 1

    state.wake("ns", "demo")  # a child changed
    await _settle()
    assert passes[-1] == '{"written": true}'

    await state.release("ns", "demo")
    assert not state.keepers


@pytest.mark.asyncio
async def test_a_new_generation_wakes_the_keeper_to_read_the_job_afresh(passes: list[str | None]) -> None:
    state = OperatorState(Settings(), cluster=None)  # type: ignore[arg-type]
    state.keep("ns", "demo", 1, _body())
    await _settle()

    state.keep("ns", "demo", 2, _body(2))
    await _settle()

    assert passes[-1] is None and len(passes) == 2
    await state.release("ns", "demo")


@pytest.mark.asyncio
async def test_stopping_the_operator_stops_every_keeper(passes: list[str | None]) -> None:
    state = OperatorState(Settings(), cluster=None)  # type: ignore[arg-type]
    state.keep("ns", "one", 1, _body())
    state.keep("ns", "two", 1, _body())
    await _settle()
    tasks = [k.task for k in state.keepers.values()]

    await handlers.stop_keepers(memo=kopf.Memo(state=state))

    assert all(t is not None and t.done() for t in tasks)


def test_kopf_builds_no_diff_base_for_event_handlers() -> None:
    storage = EventsOnlyDiffBase(field="status.kopf.last-handled-configuration")
    body = kopf.Body({"metadata": {"name": "demo"}, "spec": {"template": {"spec": {"containers": []}}}})

    assert storage.build(body=body) == {}


class _ListingCluster:
    """The API's side of reading a job's children: what a listing answers, and how often."""

    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs, self.listings = jobs, 0

    async def children(self, namespace: str, name: str) -> tuple[list[Any], list[Any]]:
        self.listings += 1
        return [job_record(job) for job in self.jobs], []

    async def workloads(self, namespace: str) -> dict[str, Any]:
        return {}


def _train_job(attempt: int) -> dict[str, Any]:
    labels = {JOB_LABEL: "demo", ROLE_LABEL: "train", ATTEMPT_LABEL: str(attempt)}
    return {"metadata": {"name": f"demo-a{attempt}", "uid": f"j{attempt}", "labels": labels}, "status": {"active": 1}}


RUNNING = FineTuneJobStatus.model_validate({"startTime": "2026-11-28T10:00:00Z", "phase": "Running", "attempts": 1})


@pytest.mark.asyncio
async def test_a_keeper_reads_the_children_when_its_index_may_be_stale_and_only_then() -> None:
    api = _ListingCluster([_train_job(1)])
    state = OperatorState(Settings(resync_seconds=60.0), cluster=api)  # type: ignore[arg-type]
    keeper = Keeper("demo", 1, None)

    first = await handlers.children(state, "ns", keeper, RUNNING)  # a new keeper of a started job
    await handlers.children(state, "ns", keeper, RUNNING)
    assert api.listings == 1 and first.attempts[1].job.active == 1

    retried = RUNNING.model_copy(update={"attempts": 2})  # counted; its Job not seen yet
    await handlers.children(state, "ns", keeper, retried)
    assert api.listings == 2

    keeper.listed_at = time.monotonic() - 61  # the resync period has passed
    await handlers.children(state, "ns", keeper, RUNNING)
    assert api.listings == 3

    keeper.listed_at = None  # a pass failed
    await handlers.children(state, "ns", keeper, RUNNING)
    assert api.listings == 4


@pytest.mark.asyncio
async def test_a_job_not_started_has_no_children_to_read() -> None:
    api = _ListingCluster([_train_job(1)])
    state = OperatorState(Settings(), cluster=api)  # type: ignore[arg-type]
    keeper = Keeper("demo", 1, None)

    snapshot = await handlers.children(state, "ns", keeper, FineTuneJobStatus())

    assert api.listings == 0 and snapshot.attempts == {} and keeper.listed_at is not None
