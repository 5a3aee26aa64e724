"""The CRD's CEL rules, run with a CEL engine on (old, new) object pairs as the API server
would run them on create and update."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubetune.crdcheck import cel_problems

Manifest = dict[str, Any]


def _started(job: Manifest) -> Manifest:
    started = copy.deepcopy(job)
    started["status"] = {"phase": "Running", "startTime": "2026-11-28T09:00:00Z", "attempts": 1}
    return started


def _paths(new: Manifest, old: Manifest | None = None) -> list[str]:
    return [p.path for p in cel_problems(new, old)]


def test_valid_manifest_passes_on_create(job: Manifest) -> None:
    assert _paths(job) == []


def test_spec_may_change_before_the_job_starts(job: Manifest) -> None:
    old = copy.deepcopy(job)
    old["status"] = {"phase": "Pending"}
    job["spec"]["method"]["type"] = "dora"

    assert _paths(job, old) == []


def test_changing_the_method_of_a_started_job_is_refused(job: Manifest) -> None:
    old = _started(job)
    new = copy.deepcopy(old)
    new["spec"]["method"]["type"] = "full"

    problems = cel_problems(new, old)

    assert [p.path for p in problems] == ["spec.method"]
    assert "cannot change once the job has started" in problems[0].message


def test_suspend_may_change_on_a_started_job(job: Manifest) -> None:
    old = _started(job)
    new = copy.deepcopy(old)
    new["spec"]["suspend"] = True

    assert _paths(new, old) == []


@pytest.mark.parametrize("field", ["queueName", "maxRetries"])
def test_adding_an_optional_field_to_a_started_job_is_refused(job: Manifest, field: str) -> None:
    old = _started(job)
    new = copy.deepcopy(old)
    new["spec"][field] = "team-a" if field == "queueName" else 5

    assert _paths(new, old) == [f"spec.{field}"]


def test_removing_a_field_from_a_started_job_is_refused(job: Manifest) -> None:
    job["spec"]["training"] = {"epochs": 2}
    old = _started(job)
    new = copy.deepcopy(old)
    del new["spec"]["training"]

    assert _paths(new, old) == ["spec.training"]


def test_status_updates_pass(job: Manifest) -> None:
    old = _started(job)
    new = copy.deepcopy(old)
    new["status"]["progress"] = {"step": 10, "totalSteps": 100}

    assert _paths(new, old) == []


def test_one_of_rules_hold_on_create(job: Manifest) -> None:
    job["spec"]["output"]["s3"] = {"uri": "s3://bucket/x"}

    assert _paths(job) == ["spec.output"]


@pytest.mark.parametrize(
    ("value", "ok"), [(0, True), (8, True), ("auto", True), (-1, False), (65, False), ("two", False)]
)
def test_accelerator_count_rule(job: Manifest, value: Any, ok: bool) -> None:
    job["spec"]["resources"] = {"accelerators": value}

    assert (_paths(job) == []) is ok
