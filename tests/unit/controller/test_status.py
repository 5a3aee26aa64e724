"""Status from a snapshot, table by table: Job and pod states as Kubernetes reports them,
the assessment they lead to, and the FineTuneJob status that follows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubetune.api import ConditionType, FineTuneJobSpec, FineTuneJobStatus, Phase, Problem, parse_finetunejob
from kubetune.contract import RunSummary
from kubetune.controller.observe import job_state, pod_state
from kubetune.controller.status import (
    Assessment,
    Outcome,
    assess_attempt,
    assess_preflight,
    invalid_status,
    next_status,
    next_step,
)

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def _spec(job: dict[str, Any], **spec: Any) -> FineTuneJobSpec:
    job["spec"].update(spec)
    return parse_finetunejob(job).spec


def _job(
    suspend: bool = False, active: int = 0, complete: bool = False, failed: tuple[str, str] | None = None
) -> dict[str, Any]:
    conditions = []
    if complete:
        conditions.append({"type": "Complete", "status": "True"})
    if failed:
        conditions.append({"type": "Failed", "status": "True", "reason": failed[0], "message": failed[1]})
    return {
        "metadata": {"name": "demo-a1", "labels": {"kubetune.io/attempt": "1"}},
        "spec": {"suspend": suspend},
        "status": {"active": active, "conditions": conditions},
    }


def _pod(
    index: int = 0,
    phase: str = "Running",
    waiting: tuple[str, str] | None = None,
    exit_code: int | None = None,
    reason: str | None = None,
    message: str = "",
    unschedulable: str | None = None,
    disruption: str | None = None,
) -> dict[str, Any]:
    state: dict[str, Any] = {"running": {}}
    if waiting:
        state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
    if exit_code is not None:
        state = {"terminated": {"exitCode": exit_code, "reason": reason or "Error", "message": message}}
    conditions = []
    if unschedulable:
        conditions.append(
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}
        )
    if disruption:
        conditions.append({"type": "DisruptionTarget", "status": "True", "reason": disruption})
    return {
        "metadata": {
            "name": f"demo-a1-{index}-x",
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "spec": {"containers": [{"name": "trainer", "resources": {"limits": {"memory": "32Gi"}}}]},
        "status": {
            "phase": phase,
            "conditions": conditions,
            "containerStatuses": [{"name": "trainer", "state": state}],
        },
    }


def _summary(reason: str, message: str, **extra: Any) -> str:
    return json.dumps(
        {"status": "Failed" if reason != "Completed" else "Succeeded", "reason": reason, "message": message, **extra}
    )


ATTEMPT_CASES: list[tuple[str, dict[str, Any] | None, list[dict[str, Any]], dict[str, Any], Outcome, str, str]] = [
    ("no Job yet", None, [], {}, Outcome.PENDING, "Creating", ""),
    (
        "every node running",
        _job(active=2),
        [_pod(0), _pod(1)],
        {"resources": {"nodes": 2}, "output": {"s3": {"uri": "s3://models/demo"}}},
        Outcome.RUNNING,
        "Training",
        "2 pod(s) training",
    ),
    (
        "one node still starting",
        _job(active=2),
        [_pod(0), _pod(1, phase="Pending")],
        {"resources": {"nodes": 2}, "output": {"s3": {"uri": "s3://models/demo"}}},
        Outcome.PENDING,
        "Starting",
        "1 of 2",
    ),
    (
        "every pod ended before the Job's condition came",
        _job(active=0),
        [_pod(0, "Succeeded", exit_code=0, reason="Completed"), _pod(1, "Succeeded", exit_code=0, reason="Completed")],
        {"resources": {"nodes": 2}, "output": {"s3": {"uri": "s3://models/demo"}}},
        Outcome.RUNNING,
        "Training",
        "2 of 2 pod(s) ended; waiting for the Job's result",
    ),
    (
        "one pod failed, the other still running, before the Job's condition came",
        _job(active=1),
        [_pod(0), _pod(1, "Failed", exit_code=1)],
        {"resources": {"nodes": 2}, "output": {"s3": {"uri": "s3://models/demo"}}},
        Outcome.RUNNING,
        "Training",
        "1 of 2 pod(s) ended",
    ),
    (
        "no room on any node",
        _job(active=1),
        [_pod(0, phase="Pending", unschedulable="0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")],
        {},
        Outcome.PENDING,
        "Unschedulable",
        "4 Insufficient nvidia.com/gpu",
    ),
    (
        "image cannot be pulled",
        _job(active=1),
        [_pod(0, "Pending", waiting=("ImagePullBackOff", "not found"))],
        {},
        Outcome.FAILED,
        "ImagePullError",
        "not found",
    ),
    (
        "image being pulled",
        _job(active=1),
        [_pod(0, "Pending", waiting=("ErrImagePull", "timeout"))],
        {},
        Outcome.PENDING,
        "PullingImage",
        "timeout",
    ),
    (
        "waiting for Kueue",
        _job(suspend=True),
        [],
        {"queueName": "team-a"},
        Outcome.QUEUED,
        "WaitingForAdmission",
        "team-a",
    ),
    ("suspended by the user", _job(suspend=True), [], {"suspend": True}, Outcome.SUSPENDED, "Suspended", ""),
    (
        "finished",
        _job(complete=True),
        [
            _pod(
                0,
                "Succeeded",
                exit_code=0,
                reason="Completed",
                message=_summary(
                    "Completed", "trained 60 steps", output={"location": "pvc://r/demo", "formats": ["adapter"]}
                ),
            )
        ],
        {},
        Outcome.SUCCEEDED,
        "Completed",
        "trained 60 steps",
    ),
    (
        "preempted",
        _job(failed=("PodFailurePolicy", "Pod demo-a1-0 has condition DisruptionTarget")),
        [_pod(0, "Failed", exit_code=44, disruption="PreemptionByScheduler")],
        {},
        Outcome.PREEMPTED,
        "Preempted",
        "PreemptionByScheduler",
    ),
    (
        "deadline",
        _job(failed=("DeadlineExceeded", "Job was active longer than specified deadline")),
        [],
        {},
        Outcome.FAILED,
        "DeadlineExceeded",
        "longer than specified deadline",
    ),
    (
        "bad data",
        _job(failed=("PodFailurePolicy", "exit code 42")),
        [
            _pod(
                0,
                "Failed",
                exit_code=42,
                message=_summary("DatasetInvalid", "train.jsonl line 3: empty assistant turn"),
            )
        ],
        {},
        Outcome.FAILED,
        "DatasetInvalid",
        "line 3",
    ),
    (
        "accelerator out of memory",
        _job(failed=("PodFailurePolicy", "exit code 43")),
        [_pod(0, "Failed", exit_code=43, message=_summary("OutOfMemory", "peak 79.1 GiB allocated"))],
        {},
        Outcome.FAILED,
        "OutOfMemory",
        "79.1 GiB",
    ),
    (
        "disk full",
        _job(failed=("PodFailurePolicy", "exit code 45")),
        [
            _pod(
                0,
                "Failed",
                exit_code=45,
                message=_summary(
                    "DiskFull", "no space left on /mnt/kubetune/volumes/results/demo: 0 B free of 20.0 GiB"
                ),
            )
        ],
        {},
        Outcome.FAILED,
        "DiskFull",
        "0 B free of 20.0 GiB",
    ),
    (
        "killed by the kernel",
        _job(failed=("BackoffLimitExceeded", "")),
        [_pod(1, "Failed", exit_code=137, reason="OOMKilled")],
        {},
        Outcome.FAILED,
        "OOMKilled",
        "memory limit of 32Gi",
    ),
    (
        "a crash with a summary",
        _job(failed=("BackoffLimitExceeded", "")),
        [_pod(0, "Failed", exit_code=1, message=_summary("TrainingFailed", "NCCL timeout"))],
        {},
        Outcome.RETRY,
        "TrainingFailed",
        "NCCL timeout",
    ),
    (
        "a crash with only logs",
        _job(failed=("BackoffLimitExceeded", "")),
        [_pod(1, "Failed", exit_code=139, message="Traceback...\nSegmentation fault")],
        {},
        Outcome.RETRY,
        "TrainingFailed",
        "exited with code 139: Segmentation fault",
    ),
]


@pytest.mark.parametrize(
    ("job_body", "pods", "spec", "outcome", "reason", "fragment"),
    [c[1:] for c in ATTEMPT_CASES],
    ids=[c[0] for c in ATTEMPT_CASES],
)
def test_attempt_assessment(
    job: dict[str, Any],
    job_body: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    spec: dict[str, Any],
    outcome: Outcome,
    reason: str,
    fragment: str,
) -> None:
    assessment = assess_attempt(
        job_state(job_body) if job_body else None, [pod_state(p) for p in pods], _spec(job, **spec)
    )

    assert (assessment.outcome, assessment.reason) == (outcome, reason)
    assert fragment in assessment.message


def test_preflight_assessment(job: dict[str, Any]) -> None:
    spec = _spec(job)
    bad = [pod_state(_pod(0, "Failed", exit_code=42, message=_summary("DatasetInvalid", "no examples")))]

    assert assess_preflight(job_state(_job(complete=True)), [], spec) is None
    assert assess_preflight(job_state(_job(active=1)), [pod_state(_pod(0))], spec).outcome is Outcome.PREFLIGHT
    failed = assess_preflight(job_state(_job(failed=("PodFailurePolicy", ""))), bad, spec)
    assert failed is not None and (failed.outcome, failed.reason) == (Outcome.FAILED, "DatasetInvalid")


@pytest.mark.parametrize(
    ("exit_code", "reason", "outcome"),
    [
        (1, "DatasetUnavailable", Outcome.RETRY),  # a URL that timed out may answer the next time
        (41, "InvalidSpec", Outcome.FAILED),
        (42, "DatasetInvalid", Outcome.FAILED),
        (43, "OutOfMemory", Outcome.FAILED),
        (45, "DiskFull", Outcome.FAILED),
    ],
)
def test_a_failed_preflight_is_retried_only_where_another_try_may_pass(
    job: dict[str, Any], exit_code: int, reason: str, outcome: Outcome
) -> None:
    pods = [pod_state(_pod(0, "Failed", exit_code=exit_code, message=_summary(reason, "why")))]

    assessment = assess_preflight(job_state(_job(failed=("PodFailurePolicy", ""))), pods, _spec(job))

    assert assessment is not None and (assessment.outcome, assessment.reason) == (outcome, reason)


def test_a_preflight_crash_without_a_summary_is_retried_as_a_preflight_failure(job: dict[str, Any]) -> None:
    crashed = [pod_state(_pod(0, "Failed", exit_code=139, message="Segmentation fault"))]

    assessment = assess_preflight(job_state(_job(failed=("BackoffLimitExceeded", ""))), crashed, _spec(job))

    assert assessment is not None and (assessment.outcome, assessment.reason) == (Outcome.RETRY, "PreflightFailed")
    assert "exited with code 139: Segmentation fault" in assessment.message


@pytest.mark.parametrize(
    ("attempts", "preflight_retries", "max_retries", "starts", "spent"),
    [
        (0, 0, 2, True, ""),
        (0, 2, 2, False, "the preflight failed 3 time(s)"),
        (0, 0, 0, False, "the preflight failed 1 time(s)"),
        (2, 1, 2, False, "2 attempt(s) failed, after 1 failed preflight run(s)"),
        (1, 1, 2, True, ""),
    ],
)
def test_preflight_retries_and_attempts_share_the_budget(
    job: dict[str, Any], attempts: int, preflight_retries: int, max_retries: int, starts: bool, spent: str
) -> None:
    step = next_step(
        Assessment(Outcome.RETRY, "DatasetUnavailable", "timed out"),
        _spec(job, maxRetries=max_retries),
        FineTuneJobStatus(attempts=attempts, preflight_retries=preflight_retries),
    )

    assert step.start_attempt is starts
    assert step.assessment is not None
    if not starts:
        assert step.assessment.reason == "RetriesExhausted" and step.assessment.message.startswith(spent)


def test_a_disrupted_preflight_is_preempted_not_failed(job: dict[str, Any]) -> None:
    evicted = [pod_state(_pod(0, "Failed", exit_code=143, disruption="EvictionByEvictionAPI"))]

    assessment = assess_preflight(job_state(_job(failed=("PodFailurePolicy", "DisruptionTarget"))), evicted, _spec(job))

    assert assessment is not None and (assessment.outcome, assessment.reason) == (Outcome.PREEMPTED, "Preempted")
    assert "EvictionByEvictionAPI" in assessment.message


@pytest.mark.parametrize(
    ("attempts", "max_retries", "starts", "outcome"),
    [(1, 2, True, Outcome.RETRY), (3, 2, False, Outcome.FAILED), (1, 0, False, Outcome.FAILED)],
)
def test_retries_last_as_long_as_the_budget(
    job: dict[str, Any], attempts: int, max_retries: int, starts: bool, outcome: Outcome
) -> None:
    step = next_step(
        Assessment(Outcome.RETRY, "TrainingFailed", "boom"),
        _spec(job, maxRetries=max_retries),
        FineTuneJobStatus(attempts=attempts),
    )

    assert step.start_attempt is starts and step.counts is True
    assert step.assessment is not None and step.assessment.outcome is outcome
    if not starts:
        assert step.assessment.reason == "RetriesExhausted" and "TrainingFailed: boom" in step.assessment.message


def test_preemption_always_retries_and_costs_nothing(job: dict[str, Any]) -> None:
    step = next_step(
        Assessment(Outcome.PREEMPTED, "Preempted", ""), _spec(job, maxRetries=0), FineTuneJobStatus(attempts=1)
    )

    assert step.start_attempt is True and step.counts is False


@pytest.mark.parametrize(
    ("outcome", "phase"),
    [
        (Outcome.PREFLIGHT, Phase.PENDING),
        (Outcome.QUEUED, Phase.QUEUED),
        (Outcome.RUNNING, Phase.RUNNING),
        (Outcome.SUSPENDED, Phase.SUSPENDED),
        (Outcome.SUCCEEDED, Phase.SUCCEEDED),
        (Outcome.FAILED, Phase.FAILED),
        (Outcome.PREEMPTED, Phase.QUEUED),
        (Outcome.RETRY, Phase.PENDING),
    ],
)
def test_phase_and_conditions_follow_the_assessment(outcome: Outcome, phase: Phase) -> None:
    status = next_status(None, 3, Assessment(outcome, "Because", "details"), NOW)
    held = {c.type for c in status.conditions if c.status == "True"}

    assert status.phase is phase
    assert status.observed_generation == 3
    assert ConditionType.VALID in held
    assert (ConditionType.RUNNING in held) is (outcome is Outcome.RUNNING)
    assert (ConditionType.FAILED in held) is (outcome is Outcome.FAILED)
    assert (ConditionType.ADMITTED in held) is (outcome is not Outcome.QUEUED)
    assert (status.completion_time is not None) is phase.finished


def test_transition_time_moves_only_when_a_condition_flips() -> None:
    first = next_status(None, 1, Assessment(Outcome.RUNNING, "Training"), NOW)
    later = next_status(first, 1, Assessment(Outcome.RUNNING, "Training"), NOW + timedelta(minutes=5))
    done = next_status(later, 1, Assessment(Outcome.SUCCEEDED, "Completed"), NOW + timedelta(minutes=9))

    running = {c.type: c for c in later.conditions}[ConditionType.RUNNING]
    assert running.last_transition_time == NOW
    succeeded = {c.type: c for c in done.conditions}[ConditionType.SUCCEEDED]
    assert succeeded.last_transition_time == NOW + timedelta(minutes=9)


def test_success_records_where_the_output_landed() -> None:
    summary = {"output": {"location": "s3://models/demo", "formats": ["adapter", "merged"]}}

    status = next_status(None, 1, Assessment(Outcome.SUCCEEDED, "Completed", "", RunSummary.from_json(summary)), NOW)

    assert status.output is not None and status.output.location == "s3://models/demo"


@pytest.mark.parametrize(
    ("location", "digest"),
    [
        ("oci://registry.example.com/adapters/phi3:v1@sha256:" + "ab" * 32, "sha256:" + "ab" * 32),
        ("oci://127.0.0.1:5000/adapters/phi3:v1@sha256:" + "0" * 64, "sha256:" + "0" * 64),
        ("oci://registry.example.com/adapters/phi3:v1", None),
        ("s3://models/demo", None),
        ("https://huggingface.co/acme/phi3-support/tree/experiments", None),
    ],
)
def test_the_output_of_a_pushed_image_shows_its_digest(location: str, digest: str | None) -> None:
    summary = RunSummary.from_json({"output": {"location": location, "formats": ["adapter"]}})

    status = next_status(None, 1, Assessment(Outcome.SUCCEEDED, "Completed", "", summary), NOW)

    assert status.output is not None and status.output.digest == digest
    assert status.output.location == location


def test_invalid_spec_fails_with_every_problem() -> None:
    status = invalid_status(
        [Problem("spec.method.lora", "takes no lora block"), Problem("spec.training.epochs", "not both")], 2, NOW
    )

    failed = {c.type: c for c in status.conditions}[ConditionType.FAILED]
    assert status.phase is Phase.FAILED
    assert failed.reason == "InvalidSpec"
    assert failed.message == "spec.method.lora: takes no lora block; spec.training.epochs: not both"


def test_a_preflight_killed_for_memory_says_what_the_author_can_change(job: dict[str, Any]) -> None:
    killed = _pod(0, "Failed", exit_code=137, reason="OOMKilled")
    killed["spec"]["containers"][0]["resources"]["limits"]["memory"] = "4Gi"

    assessment = assess_preflight(job_state(_job(failed=("BackoffLimitExceeded", ""))), [pod_state(killed)], _spec(job))

    assert assessment is not None and (assessment.outcome, assessment.reason) == (Outcome.FAILED, "OOMKilled")
    assert "memory limit of 4Gi, the preflight's fixed limit" in assessment.message
    assert "spec.dataset.preflight: false" in assessment.message
    assert "raise spec.resources.memory" not in assessment.message
