"""The index of children the keepers plan from: what the watch delivered, what the keeper
made and removed itself, and a fresh listing merged with the events that came meanwhile."""

from __future__ import annotations

from typing import Any

from kubetune.api import Phase
from kubetune.api.status import FineTuneJobStatus
from kubetune.controller.builders import ATTEMPT_LABEL, JOB_LABEL, KUEUE_QUEUE_LABEL, ROLE_LABEL
from kubetune.controller.index import ChildIndex
from kubetune.controller.observe import job_record, pod_record
from kubetune.controller.reconcile import assemble, expected_job_missing

KEY = ("ns", "demo")


def _job(name: str, uid: str, attempt: int | None = 1, active: int = 0, complete: bool = False) -> dict[str, Any]:
    labels = {JOB_LABEL: "demo", ROLE_LABEL: "train" if attempt else "preflight"}
    if attempt:
        labels[ATTEMPT_LABEL] = str(attempt)
    conditions = [{"type": "Complete", "status": "True"}] if complete else []
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": uid, "labels": labels},
        "spec": {},
        "status": {"active": active, "conditions": conditions},
    }


def _pod(name: str, job_uid: str, phase: str = "Running") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "labels": {JOB_LABEL: "demo"},
            "ownerReferences": [{"kind": "Job", "uid": job_uid}],
            "annotations": {"batch.kubernetes.io/job-completion-index": "0"},
        },
        "status": {"phase": phase, "podIP": "10.0.0.7"},
    }


def test_the_watch_s_events_make_the_snapshot() -> None:
    index = ChildIndex()
    index.job_event(KEY, "ADDED", _job("demo-a1", "j1", active=1))
    index.pod_event(KEY, None, _pod("demo-a1-0", "j1"))

    snapshot = index.snapshot(KEY)

    assert snapshot.attempts[1].job.active == 1
    assert snapshot.attempts[1].rank0_address == "10.0.0.7"
    assert index.snapshot(("ns", "other")).attempts == {}


def test_a_later_event_replaces_and_a_deletion_removes() -> None:
    index = ChildIndex()
    index.job_event(KEY, "ADDED", _job("demo-a1", "j1", active=1))
    index.job_event(KEY, "MODIFIED", _job("demo-a1", "j1", complete=True))
    assert index.snapshot(KEY).attempts[1].job.complete

    index.job_event(KEY, "DELETED", _job("demo-a1", "j1", complete=True))

    assert index.snapshot(KEY).attempts == {}
    assert len(index) == 0, "a job whose children are all gone is forgotten"


def test_a_job_the_keeper_deleted_stays_deleted_through_its_late_events() -> None:
    index = ChildIndex()
    index.job_event(KEY, "ADDED", _job("demo-preflight", "p1", attempt=None))
    index.deleted(KEY, "demo-preflight")
    index.created(KEY, _job("demo-preflight", "p2", attempt=None, active=1))

    index.job_event(KEY, "MODIFIED", _job("demo-preflight", "p1", attempt=None, complete=True))  # queued before

    preflight = index.snapshot(KEY).preflight
    assert preflight is not None and preflight.job.active == 1 and not preflight.job.complete


def test_a_created_job_does_not_overwrite_what_the_watch_said_since() -> None:
    index = ChildIndex()
    index.job_event(KEY, "MODIFIED", _job("demo-a1", "j1", active=1))
    index.created(KEY, _job("demo-a1", "j1"))
    assert index.snapshot(KEY).attempts[1].job.active == 1


def test_a_listing_replaces_the_job_s_entries_but_not_the_changes_after_it_began() -> None:
    index = ChildIndex()
    index.job_event(KEY, "ADDED", _job("demo-a1", "j1", active=1))
    index.pod_event(KEY, "ADDED", _pod("gone", "j1"))  # its deletion was never delivered
    since = index.last
    index.job_event(KEY, "MODIFIED", _job("demo-a1", "j1", complete=True))  # while the listing ran
    index.job_event(KEY, "ADDED", _job("demo-a2", "j2", attempt=2))

    listed_jobs = [job_record(_job("demo-a1", "j1", active=1))]  # read before the Job completed
    index.replace(KEY, listed_jobs, [pod_record(_pod("kept", "j1"))], since)

    snapshot = index.snapshot(KEY)
    assert snapshot.attempts[1].job.complete, "the newer event wins over the listing"
    assert 2 in snapshot.attempts, "an object added meanwhile stays"
    assert [p.name for p in snapshot.attempts[1].pods] == ["kept"], "what the listing no longer has goes"


def test_a_deletion_during_the_listing_wins_over_it() -> None:
    index = ChildIndex()
    index.job_event(KEY, "ADDED", _job("demo-a1", "j1"))
    index.job_event(KEY, "ADDED", _job("demo-a2", "j2", attempt=2))
    since = index.last
    index.job_event(KEY, "DELETED", _job("demo-a1", "j1"))

    index.replace(KEY, [job_record(_job("demo-a1", "j1")), job_record(_job("demo-a2", "j2", attempt=2))], [], since)

    assert set(index.snapshot(KEY).attempts) == {2}


def test_released_jobs_are_forgotten_and_their_children_s_deletions_add_nothing() -> None:
    index = ChildIndex()
    index.job_event(KEY, "ADDED", _job("demo-a1", "j1"))
    index.release(KEY)
    index.job_event(KEY, "DELETED", _job("demo-a1", "j1"))
    assert len(index) == 0


def test_queued_follows_the_job_label() -> None:
    index = ChildIndex()
    job = _job("demo-a1", "j1")
    index.job_event(KEY, "ADDED", job)
    assert not index.queued(KEY)
    job["metadata"]["labels"][KUEUE_QUEUE_LABEL] = "team-a"
    index.job_event(KEY, "MODIFIED", job)
    assert index.queued(KEY)


# ----------------------------------------------------------------------------- assembling and checking


def test_pods_join_their_job_by_owner_uid_or_job_name_label() -> None:
    owned = pod_record(_pod("a", "j1"))
    unowned_body = _pod("b", "")
    unowned_body["metadata"]["ownerReferences"] = []
    unowned_body["metadata"]["labels"]["batch.kubernetes.io/job-name"] = "demo-a1"
    other = pod_record(_pod("c", "old-uid"))

    snapshot = assemble([job_record(_job("demo-a1", "j1"))], [owned, pod_record(unowned_body), other])

    assert sorted(p.name for p in snapshot.attempts[1].pods) == ["a", "b"]


def test_a_job_the_status_counts_and_the_index_lacks_is_expected() -> None:
    started = FineTuneJobStatus.model_validate({"startTime": "2026-11-28T10:00:00Z", "phase": "Running", "attempts": 2})
    with_attempt_2 = assemble([job_record(_job("demo-a2", "j2", attempt=2))], [])

    assert expected_job_missing(started, assemble([job_record(_job("demo-a1", "j1"))], []))
    assert not expected_job_missing(started, with_attempt_2)
    preflighting = FineTuneJobStatus.model_validate({"startTime": "2026-11-28T10:00:00Z", "phase": "Pending"})
    assert expected_job_missing(preflighting, assemble([], []))
    assert not expected_job_missing(FineTuneJobStatus(), assemble([], [])), "not started: nothing expected"
    done = started.model_copy(update={"phase": Phase.SUCCEEDED})
    assert not expected_job_missing(done, assemble([], [])), "a finished job's Jobs may be gone"


def test_an_event_that_changes_no_fact_is_told_apart() -> None:
    index = ChildIndex()
    job = _job("demo-a1", "j1")
    index.created(KEY, job)

    assert not index.job_event(KEY, "ADDED", job), "the keeper's own Job, as it made it"
    job["metadata"]["resourceVersion"] = "12"
    assert not index.job_event(KEY, "MODIFIED", job), "a field the planner does not read"
    assert index.job_event(KEY, "MODIFIED", _job("demo-a1", "j1", active=1))
    assert index.pod_event(KEY, "ADDED", _pod("demo-a1-0", "j1"))
    assert index.pod_event(KEY, "DELETED", _pod("demo-a1-0", "j1"))
    assert not index.pod_event(KEY, "DELETED", _pod("demo-a1-0", "j1"))
