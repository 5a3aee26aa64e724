"""The children of every FineTuneJob as the watch delivered them, reduced to the facts the
planner reads (`JobRecord`, `PodRecord`), so a keeper plans without asking the API server.

Kopf watches every Job and Pod that carries the job label; each event replaces what the
index holds of that object, and a deletion removes it. What the index holds can be behind
(an event not delivered yet, a dropped watch): the keeper reads the children afresh when
it may be (see `handlers.reconcile`) and `replace`s a job's entries with the listing.

A listing takes a while, and events go on arriving meanwhile; an event applied after the
listing began is newer than what the listing saw of that object (or as new: a watch
delivers events in order), so `replace` keeps it. Every change carries a sequence number
for that comparison.

Kopf's own indices (`@kopf.index`) are not used: they give a handler's kwargs a live view,
not a keeper task, and offer no way to replace one job's entries with a fresh listing.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubetune.controller.observe import JobRecord, PodRecord, WorkloadState, job_record, pod_record
from kubetune.controller.reconcile import Snapshot, assemble

Key = tuple[str, str]
"""A job's namespace and the value of its children's job label."""

DELETED = None
"""What a deletion leaves in `_Entries.records` until a listing, or the object's end, clears it."""


@dataclass
class _Entries:
    """One FineTuneJob's Jobs and Pods by uid; a None record is a deletion, kept so a late
    event from before it does not bring the object back."""

    jobs: dict[str, tuple[int, JobRecord | None]] = field(default_factory=dict)
    pods: dict[str, tuple[int, PodRecord | None]] = field(default_factory=dict)


class ChildIndex:
    def __init__(self) -> None:
        self._entries: dict[Key, _Entries] = {}
        self._sequence = itertools.count(1)
        self.last = 0
        """The sequence number of the latest change; a listing remembers it when it begins."""

    def _next(self) -> int:
        self.last = next(self._sequence)
        return self.last

    def _of(self, key: Key) -> _Entries:
        return self._entries.setdefault(key, _Entries())

    # ------------------------------------------------------------------------- from the watch

    def job_event(self, key: Key, event_type: str | None, job: Mapping[str, Any]) -> bool:
        """Whether the facts of the job's Jobs changed (most events change only fields the
        planner does not read, or tell of a Job the keeper made itself)."""
        record = job_record(dict(job))
        return self._seen(key, "jobs", record.uid, None if event_type == "DELETED" else record)

    def pod_event(self, key: Key, event_type: str | None, pod: Mapping[str, Any]) -> bool:
        """Whether the facts of the job's pods changed."""
        record = pod_record(dict(pod))
        return self._seen(key, "pods", record.uid, None if event_type == "DELETED" else record)

    def _seen(self, key: Key, kind: str, uid: str, record: Any) -> bool:
        """A deleted object's late events (queued before its deletion was seen) change nothing.
        A job whose children are all deleted is forgotten (a FineTuneJob deleted, or cleaned up
        after its TTL), so deletions leave nothing behind for long."""
        if record is DELETED and key not in self._entries:
            return False
        entries = self._of(key)
        records: dict[str, tuple[int, Any]] = getattr(entries, kind)
        held = records.get(uid)
        if record is not DELETED and held is not None and held[1] is DELETED:
            return False
        records[uid] = (self._next(), record)
        if record is DELETED and all(r is DELETED for _, r in (*entries.jobs.values(), *entries.pods.values())):
            del self._entries[key]
        return held is None or held[1] != record

    # ------------------------------------------------------------------------- from the keeper

    def created(self, key: Key, job: Mapping[str, Any]) -> None:
        """A Job the keeper just made, as the API answered: known before its event comes."""
        record = job_record(dict(job))
        entries = self._of(key)
        if record.uid not in entries.jobs:
            entries.jobs[record.uid] = (self._next(), record)

    def deleted(self, key: Key, job_name: str) -> None:
        """A Job the keeper just deleted (a preflight started again has a new Job of the same name)."""
        entries = self._of(key)
        for uid, (_, record) in list(entries.jobs.items()):
            if record is not None and record.state.name == job_name:
                entries.jobs[uid] = (self._next(), DELETED)

    def replace(self, key: Key, jobs: Iterable[JobRecord], pods: Iterable[PodRecord], since: int) -> None:
        """What a listing begun at change `since` read of the job, but for what changed after."""
        entries = self._of(key)
        entries.jobs = _merged(entries.jobs, {r.uid: r for r in jobs}, since)
        entries.pods = _merged(entries.pods, {r.uid: r for r in pods}, since)

    def release(self, key: Key) -> None:
        """The FineTuneJob is gone; its children's deletions follow (and are forgotten)."""
        self._entries.pop(key, None)

    # ------------------------------------------------------------------------- reading

    def queued(self, key: Key) -> bool:
        """Whether a Job of the job was made for a Kueue queue."""
        return any(record.queued for record in self._live_jobs(key))

    def snapshot(self, key: Key, workloads: Mapping[str, WorkloadState] | None = None) -> Snapshot:
        entries = self._entries.get(key)
        pods = [] if entries is None else [r for _, r in entries.pods.values() if r is not None]
        return assemble(self._live_jobs(key), pods, workloads)

    def _live_jobs(self, key: Key) -> list[JobRecord]:
        entries = self._entries.get(key)
        return [] if entries is None else [r for _, r in entries.jobs.values() if r is not None]

    def __len__(self) -> int:
        return sum(len(e.jobs) + len(e.pods) for e in self._entries.values())


def _merged(held: dict[str, tuple[int, Any]], listed: Mapping[str, Any], since: int) -> dict[str, tuple[int, Any]]:
    """The listing, with each change applied after it began (`since`) kept over it: an object
    added, changed or deleted meanwhile stays as that change left it. Deletions the listing
    agrees with are forgotten."""
    merged = {uid: (since, record) for uid, record in listed.items()}
    for uid, (sequence, record) in held.items():
        if sequence > since:
            merged[uid] = (sequence, record)
    return merged
