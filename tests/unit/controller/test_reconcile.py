"""The planner, step by step through a job's life: what it creates, deletes, suspends,
writes and reports from each snapshot, and that it writes nothing when nothing changed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubetune.api import FineTuneJobStatus, Phase
from kubetune.contract import Figures, RunSummary
from kubetune.controller.observe import JobState, PodState, WorkloadState
from kubetune.controller.reconcile import (
    Action,
    Attempt,
    Create,
    Delete,
    Emit,
    SetSuspend,
    SetWorkloadActive,
    Snapshot,
    WriteStatus,
    plan,
)
from kubetune.controller.settings import AcceleratorProfile, Settings

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
SETTINGS = Settings()


def _body(job: dict[str, Any], status: FineTuneJobStatus | None = None, **spec: Any) -> dict[str, Any]:
    job["spec"].update(spec)
    job["metadata"].update(uid="u-1", generation=1, resourceVersion="7")
    if status is not None:
        job["status"] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return job


def _running(attempt: int = 1, **job: Any) -> Attempt:
    return Attempt(
        JobState(name=f"demo-a{attempt}", attempt=attempt, suspended=False, active=1, **job),
        (PodState(name=f"demo-a{attempt}-0", index=0, phase="Running"),),
    )


def _failed(
    attempt: int, exit_code: int, reason: str, disruption: str | None = None, started: dict[str, Any] | None = None
) -> Attempt:
    summary = RunSummary(reason=reason, message=f"{reason} happened")
    pod = PodState(
        name=f"demo-a{attempt}-0",
        index=0,
        phase="Failed",
        exit_code=exit_code,
        summary=summary,
        raw_message=json.dumps(summary.as_json()),
        disruption=disruption,
    )
    job = JobState(
        name=f"demo-a{attempt}",
        attempt=attempt,
        suspended=False,
        failed=1,
        failed_reason="PodFailurePolicy",
        started_spec=started,
    )
    return Attempt(job, (pod,))


def _started(attempts: int = 1, preemptions: int = 0, phase: Phase = Phase.RUNNING) -> FineTuneJobStatus:
    return FineTuneJobStatus(
        phase=phase, attempts=attempts, preemptions=preemptions, start_time=NOW - timedelta(minutes=5)
    )


def _kinds(actions: list[Action]) -> list[str]:
    out = []
    for action in actions:
        match action:
            case Create(manifest):
                out.append(f"create {manifest['kind']} {manifest['metadata']['name']}")
            case Delete(kind, name):
                out.append(f"delete {kind} {name}")
            case SetSuspend(job, suspend):
                out.append(f"suspend {job} {suspend}")
            case SetWorkloadActive(workload, active):
                out.append(f"activate {workload} {active}")
            case WriteStatus(status):
                out.append(f"status {status.phase} attempts={status.attempts} preemptions={status.preemptions}")
            case Emit(warning, reason, _):
                out.append(f"{'warning' if warning else 'event'} {reason}")
    return out


def _status(actions: list[Action]) -> FineTuneJobStatus:
    return next(a.status for a in reversed(actions) if isinstance(a, WriteStatus))


def test_a_new_job_starts_with_its_children_and_the_preflight(job: dict[str, Any]) -> None:
    actions = plan(_body(job), Snapshot(), SETTINGS, NOW)

    assert _kinds(actions) == [
        "status Pending attempts=0 preemptions=0",
        "create ConfigMap demo-spec",
        "create Service demo",
        "create Job demo-preflight",
        "event Preflight",
    ]
    assert _status(actions).start_time == NOW


def test_the_first_attempt_is_counted_before_its_job_is_created(job: dict[str, Any]) -> None:
    passed = Attempt(JobState(name="demo-preflight", attempt=0, suspended=False, complete=True))
    status = FineTuneJobStatus(start_time=NOW)

    actions = plan(_body(job, status), Snapshot(preflight=passed), SETTINGS, NOW)

    assert _kinds(actions) == [
        "status Pending attempts=1 preemptions=0",
        "create ConfigMap demo-spec",
        "create Service demo",
        "create Job demo-a1",
        "event Creating",
    ]


def test_without_preflight_the_first_attempt_starts_at_once(job: dict[str, Any]) -> None:
    job["spec"]["dataset"]["preflight"] = False

    actions = plan(_body(job), Snapshot(), SETTINGS, NOW)

    assert [k for k in _kinds(actions) if k.startswith("create Job")] == ["create Job demo-a1"]
    assert _status(actions).attempts == 1


def test_a_bad_dataset_fails_in_the_preflight_and_no_accelerator_is_asked_for(job: dict[str, Any]) -> None:
    failed = _failed(0, 42, "DatasetInvalid")
    preflight = Attempt(dataclass_replace(failed.job, name="demo-preflight"), failed.pods)

    actions = plan(_body(job, FineTuneJobStatus(start_time=NOW)), Snapshot(preflight=preflight), SETTINGS, NOW)

    assert _kinds(actions) == ["status Failed attempts=0 preemptions=0", "warning DatasetInvalid"]
    assert "DatasetInvalid happened" in _status(actions).conditions[-1].message


def dataclass_replace(state: JobState, **changes: Any) -> JobState:
    import dataclasses

    return dataclasses.replace(state, **changes)


def test_a_retryable_failure_keeps_the_attempt_s_job_and_starts_the_next(job: dict[str, Any]) -> None:
    snapshot = Snapshot(attempts={1: _failed(1, 1, "TrainingFailed")})

    actions = plan(_body(job, _started()), snapshot, SETTINGS, NOW)

    assert _kinds(actions) == [
        "status Pending attempts=2 preemptions=0",
        "create ConfigMap demo-spec",
        "create Service demo",
        "create Job demo-a2",
        "warning TrainingFailed",
        "event Retrying",
    ]


def test_a_preemption_starts_the_next_attempt_without_counting_it(job: dict[str, Any]) -> None:
    snapshot = Snapshot(attempts={1: _failed(1, 143, "Interrupted", disruption="PreemptionByScheduler")})

    actions = plan(_body(job, _started()), snapshot, SETTINGS, NOW)

    assert "create Job demo-a2" in _kinds(actions)
    status = _status(actions)
    assert (status.phase, status.attempts, status.preemptions) == (Phase.QUEUED, 1, 1)


def test_the_attempt_after_a_preemption_has_the_next_number(job: dict[str, Any]) -> None:
    snapshot = Snapshot(attempts={1: _failed(1, 143, "Interrupted"), 2: _running(2)})

    actions = plan(_body(job, _started(attempts=1, preemptions=1)), snapshot, SETTINGS, NOW)

    assert not any(isinstance(a, Create | Delete) for a in actions)
    assert _status(actions).phase is Phase.RUNNING


@pytest.mark.parametrize(("kept", "deleted"), [(3, ["demo-a1", "demo-a2"]), (0, [f"demo-a{n}" for n in range(1, 6)])])
def test_failed_attempts_jobs_are_kept_up_to_the_bound_the_oldest_going_first(
    job: dict[str, Any], kept: int, deleted: list[str]
) -> None:
    failed = {n: _failed(n, 1, "TrainingFailed") for n in range(1, 6)}
    snapshot = Snapshot(attempts={**failed, 6: _running(6)})

    actions = plan(_body(job, _started(attempts=6), maxRetries=9), snapshot, Settings(kept_failed_attempts=kept), NOW)

    assert [a.name for a in actions if isinstance(a, Delete)] == deleted


def test_the_attempt_that_just_failed_counts_toward_the_bound_as_the_retry_starts(job: dict[str, Any]) -> None:
    snapshot = Snapshot(attempts={1: _failed(1, 1, "TrainingFailed"), 2: _failed(2, 1, "TrainingFailed")})

    actions = plan(_body(job, _started(attempts=2), maxRetries=5), snapshot, Settings(kept_failed_attempts=1), NOW)

    assert [k for k in _kinds(actions) if k.startswith(("delete", "create Job"))] == [
        "delete Job demo-a1",
        "create Job demo-a3",
    ]


def test_a_disrupted_preflight_starts_again_without_counting_an_attempt(job: dict[str, Any]) -> None:
    failed = _failed(0, 143, "Interrupted", disruption="EvictionByEvictionAPI")
    preflight = Attempt(dataclass_replace(failed.job, name="demo-preflight"), failed.pods)
    status = _status(plan(_body(job), Snapshot(), SETTINGS, NOW - timedelta(minutes=1)))

    actions = plan(_body(job, status), Snapshot(preflight=preflight), SETTINGS, NOW)

    assert _kinds(actions) == [
        "delete Job demo-preflight",
        "status Pending attempts=0 preemptions=0",
        "create ConfigMap demo-spec",
        "create Service demo",
        "create Job demo-preflight",
        "warning Preempted",
    ]
    running = next(c for c in _status(actions).conditions if c.type == "Running")
    assert running.reason == "Preflight" and "EvictionByEvictionAPI" in running.message


def test_a_preflight_that_failed_for_a_passing_reason_starts_again_counted(job: dict[str, Any]) -> None:
    failed = _failed(0, 1, "DatasetUnavailable")
    preflight = Attempt(dataclass_replace(failed.job, name="demo-preflight"), failed.pods)
    status = _status(plan(_body(job), Snapshot(), SETTINGS, NOW - timedelta(minutes=1)))

    actions = plan(_body(job, status), Snapshot(preflight=preflight), SETTINGS, NOW)

    assert _kinds(actions) == [
        "delete Job demo-preflight",
        "status Pending attempts=0 preemptions=0",
        "create ConfigMap demo-spec",
        "create Service demo",
        "create Job demo-preflight",
        "warning DatasetUnavailable",
    ]
    again = _status(actions)
    assert again.preflight_retries == 1
    running = next(c for c in again.conditions if c.type == "Running")
    assert running.reason == "Preflight" and "DatasetUnavailable happened" in running.message


def test_a_preflight_that_keeps_failing_spends_the_retry_budget(job: dict[str, Any]) -> None:
    failed = _failed(0, 1, "DatasetUnavailable")
    preflight = Attempt(dataclass_replace(failed.job, name="demo-preflight"), failed.pods)
    status = FineTuneJobStatus(start_time=NOW, preflight_retries=2)

    actions = plan(_body(job, status, maxRetries=2), Snapshot(preflight=preflight), SETTINGS, NOW)

    assert _kinds(actions) == ["status Failed attempts=0 preemptions=0", "warning RetriesExhausted"]
    assert "DatasetUnavailable happened" in _status(actions).conditions[-1].message


def test_retries_run_out(job: dict[str, Any]) -> None:
    snapshot = Snapshot(attempts={3: _failed(3, 1, "TrainingFailed")})

    actions = plan(_body(job, _started(attempts=3)), snapshot, SETTINGS, NOW)

    assert _kinds(actions) == ["status Failed attempts=3 preemptions=0", "warning RetriesExhausted"]
    assert not any(isinstance(a, Create) for a in actions)


def test_invalid_data_is_not_retried(job: dict[str, Any]) -> None:
    snapshot = Snapshot(attempts={1: _failed(1, 42, "DatasetInvalid")})

    actions = plan(_body(job, _started()), snapshot, SETTINGS, NOW)

    assert _status(actions).phase is Phase.FAILED
    assert not any(isinstance(a, Create) for a in actions)


def test_a_counted_attempt_whose_job_is_missing_is_created_once_more(job: dict[str, Any]) -> None:
    """The operator stopped between counting the attempt and creating its Job."""
    actions = plan(_body(job, _started(attempts=2, phase=Phase.PENDING)), Snapshot(), SETTINGS, NOW)

    assert [a for a in _kinds(actions) if a.startswith("create Job")] == ["create Job demo-a2"]
    assert all(s.status.attempts == 2 for s in actions if isinstance(s, WriteStatus))


def test_success_reports_where_the_output_landed(job: dict[str, Any]) -> None:
    summary = {"status": "Succeeded", "message": "trained 40 steps", "output": {"location": "pvc://results/demo"}}
    pod = PodState(name="demo-a1-0", index=0, phase="Succeeded", exit_code=0, summary=RunSummary.from_json(summary))
    done = Attempt(JobState(name="demo-a1", attempt=1, suspended=False, succeeded=1, complete=True), (pod,))

    actions = plan(_body(job, _started()), Snapshot(attempts={1: done}), SETTINGS, NOW)

    status = _status(actions)
    assert status.phase is Phase.SUCCEEDED and status.completion_time == NOW
    assert status.output is not None and status.output.location == "pvc://results/demo"
    event = next(a for a in actions if isinstance(a, Emit))
    assert not event.warning and "pvc://results/demo" in event.message


def test_a_run_that_ends_between_two_polls_keeps_its_final_figures(job: dict[str, Any]) -> None:
    metrics = Figures.model_validate(
        {"steps": 40, "trainLoss": 0.41, "evalLoss": 0.52, "evalAccuracy": 0.9, "precision": "bf16"}
    )
    summary = RunSummary(status="Succeeded", message="trained 40 steps", metrics=metrics)
    pod = PodState(name="demo-a1-0", index=0, phase="Succeeded", exit_code=0, summary=summary)
    done = Attempt(JobState(name="demo-a1", attempt=1, suspended=False, succeeded=1, complete=True), (pod,))
    polled = FineTuneJobStatus.model_validate(
        {**_started().model_dump(by_alias=True), "progress": {"step": 10, "totalSteps": 40, "loss": 1.5}}
    )

    never = _status(plan(_body(job, _started(phase=Phase.PENDING)), Snapshot(attempts={1: done}), SETTINGS, NOW))
    once = _status(plan(_body(job, polled), Snapshot(attempts={1: done}), SETTINGS, NOW))

    assert never.progress is not None and (never.progress.step, never.progress.loss) == (40, 0.41)
    assert never.progress.eval_loss == 0.52 and never.progress.percent == 100.0
    assert once.progress is not None and (once.progress.step, once.progress.total_steps, once.progress.loss) == (
        40,
        40,
        0.41,
    )
    assert never.metrics == {"steps": 40.0, "trainLoss": 0.41, "evalLoss": 0.52, "evalAccuracy": 0.9}


def test_a_preference_run_s_progress_ends_with_its_final_evaluation(job: dict[str, Any]) -> None:
    metrics = Figures.model_validate({"steps": 20, "trainLoss": 0.3, "evalLoss": 0.4, "evalRewardAccuracy": 1.0})
    summary = RunSummary(status="Succeeded", message="trained 20 steps", metrics=metrics)
    pod = PodState(name="demo-a1-0", index=0, phase="Succeeded", exit_code=0, summary=summary)
    done = Attempt(JobState(name="demo-a1", attempt=1, suspended=False, succeeded=1, complete=True), (pod,))
    progress = {"step": 20, "totalSteps": 20, "rewardAccuracy": 0.875, "evalRewardAccuracy": 0.5}
    polled = FineTuneJobStatus.model_validate({**_started().model_dump(by_alias=True), "progress": progress})

    status = _status(plan(_body(job, polled), Snapshot(attempts={1: done}), SETTINGS, NOW))

    assert status.progress is not None and status.progress.eval_reward_accuracy == 1.0  # polled: before training
    assert status.progress.reward_accuracy == 0.875
    assert status.metrics is not None and status.metrics["evalRewardAccuracy"] == 1.0


def test_pods_that_end_before_their_job_s_condition_keep_the_job_running(job: dict[str, Any]) -> None:
    ended = PodState(name="demo-a1-0", index=0, phase="Succeeded", exit_code=0, summary=RunSummary(status="Succeeded"))
    ending = Attempt(JobState(name="demo-a1", attempt=1, suspended=False, active=0), (ended,))
    running = _status(plan(_body(job, _started()), Snapshot(attempts={1: _running()}), SETTINGS, NOW))

    actions = plan(_body(job, running), Snapshot(attempts={1: ending}), SETTINGS, NOW + timedelta(seconds=1))

    assert [_status(actions).phase] == [Phase.RUNNING]
    assert not any(isinstance(a, Emit) for a in actions)


def test_live_progress_is_mirrored_while_running(job: dict[str, Any]) -> None:
    from kubetune.controller.observe import progress_from_report

    progress = progress_from_report({"step": 10, "totalSteps": 40, "loss": 1.5, "phase": "training"})

    actions = plan(_body(job, _started()), Snapshot(attempts={1: _running()}), SETTINGS, NOW, progress)

    assert _status(actions).progress == progress
    assert progress is not None and progress.percent == 25.0


def test_nothing_is_written_when_nothing_changed(job: dict[str, Any]) -> None:
    snapshot = Snapshot(attempts={1: _running()})
    first = plan(_body(job, _started()), snapshot, SETTINGS, NOW)

    again = plan(_body(job, _status(first)), snapshot, SETTINGS, NOW + timedelta(seconds=30))

    assert _kinds(first) == ["status Running attempts=1 preemptions=0", "event Training"]
    assert again == []


@pytest.mark.parametrize(
    ("queue", "expected"),
    [(None, ["suspend demo-a1 True"]), ("team-a", ["activate demo-a1-wl False"])],
)
def test_suspend_stops_the_pods_or_deactivates_the_kueue_workload(
    job: dict[str, Any], queue: str | None, expected: list[str]
) -> None:
    running = _running()
    running = Attempt(running.job, running.pods, WorkloadState("demo-a1-wl", "uid-a1", active=True, admitted=True))

    actions = plan(
        _body(job, _started(), suspend=True, queueName=queue),
        Snapshot(attempts={1: running}),
        SETTINGS,
        NOW,
    )

    assert [a for a in _kinds(actions) if a.startswith(("suspend", "activate"))] == expected


def test_the_operator_never_unsuspends_a_queued_job(job: dict[str, Any]) -> None:
    waiting = Attempt(JobState(name="demo-a1", attempt=1, suspended=True))

    actions = plan(
        _body(job, _started(phase=Phase.QUEUED), queueName="team-a"),
        Snapshot(attempts={1: waiting}),
        SETTINGS,
        NOW,
    )

    assert not any(isinstance(a, SetSuspend) for a in actions)
    assert _status(actions).phase is Phase.QUEUED if any(isinstance(a, WriteStatus) for a in actions) else True


def test_resuming_a_suspended_job(job: dict[str, Any]) -> None:
    paused = Attempt(JobState(name="demo-a1", attempt=1, suspended=True))

    actions = plan(_body(job, _started(phase=Phase.SUSPENDED)), Snapshot(attempts={1: paused}), SETTINGS, NOW)

    assert "suspend demo-a1 False" in _kinds(actions)


def test_the_deadline_counts_for_the_whole_job(job: dict[str, Any]) -> None:
    snapshot = Snapshot(attempts={2: _running(2)})

    actions = plan(_body(job, _started(attempts=2), activeDeadlineSeconds=60), snapshot, SETTINGS, NOW)

    assert _kinds(actions) == [
        "delete Job demo-a2",
        "status Failed attempts=2 preemptions=0",
        "warning DeadlineExceeded",
    ]


def test_a_new_attempt_gets_what_is_left_of_the_deadline(job: dict[str, Any]) -> None:
    snapshot = Snapshot(attempts={1: _failed(1, 1, "TrainingFailed")})

    actions = plan(_body(job, _started(), activeDeadlineSeconds=3600), snapshot, SETTINGS, NOW)

    created = next(a.manifest for a in actions if isinstance(a, Create) and a.manifest["kind"] == "Job")
    assert created["spec"]["activeDeadlineSeconds"] == 3600 - 300


def test_children_go_when_the_ttl_runs_out_and_the_job_stays(job: dict[str, Any]) -> None:
    finished = _started(phase=Phase.SUCCEEDED).model_copy(update={"completion_time": NOW - timedelta(seconds=100)})
    snapshot = Snapshot(attempts={1: _running()})

    early = plan(_body(job, finished, ttlSecondsAfterFinished=3600), snapshot, SETTINGS, NOW)
    late = plan(_body(job, finished, ttlSecondsAfterFinished=60), snapshot, SETTINGS, NOW)

    assert early == []
    assert _kinds(late) == ["delete ConfigMap demo-spec", "delete Service demo", "delete Job demo-a1"]
    assert plan(_body(job, finished, ttlSecondsAfterFinished=60), Snapshot(), SETTINGS, NOW) == []


def test_an_invalid_spec_never_reaches_a_pod_and_is_reported_once(job: dict[str, Any]) -> None:
    job["spec"]["method"] = {"type": "qlora", "quantization": {"bits": 4}}
    job["spec"]["distributed"] = {"strategy": "fsdp"}

    first = plan(_body(job), Snapshot(), SETTINGS, NOW)
    again = plan(_body(job, _status(first)), Snapshot(), SETTINGS, NOW)

    assert _kinds(first) == ["status Failed attempts=0 preemptions=0", "warning InvalidSpec"]
    assert "spec." in _status(first).conditions[-1].message
    assert again == []


def test_a_job_fixed_after_being_refused_starts_afresh(job: dict[str, Any]) -> None:
    job["spec"]["resources"] = {"image": "evil.example/miner:1"}
    settings = Settings(allowed_images=("ghcr.io/kubetune/",))
    refused = _status(plan(_body(job), Snapshot(), settings, NOW))
    assert refused.phase is Phase.FAILED and refused.conditions[-1].reason == "NotAllowed"

    job["spec"]["resources"] = {"image": "ghcr.io/kubetune/trainer:1"}
    actions = plan(_body(job, refused), Snapshot(), settings, NOW)

    assert _status(actions).phase is Phase.PENDING
    assert "create Job demo-preflight" in _kinds(actions)


def test_the_default_queue_applies_to_jobs_that_name_none(job: dict[str, Any]) -> None:
    job["spec"]["dataset"]["preflight"] = False

    actions = plan(_body(job), Snapshot(), Settings(default_queue="shared"), NOW)

    created = next(a.manifest for a in actions if isinstance(a, Create) and a.manifest["kind"] == "Job")
    assert created["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "shared"
    assert created["spec"]["suspend"] is True


def test_auto_sized_jobs_get_accelerators_from_the_profiles(job: dict[str, Any]) -> None:
    job["spec"]["dataset"]["preflight"] = False
    job["spec"]["resources"] = {"accelerators": "auto"}
    profiles = (
        AcceleratorProfile("l4", "nvidia.com/gpu", 24, 4, {"gpu": "l4"}),
        AcceleratorProfile("a100", "nvidia.com/gpu", 80, 8, {"gpu": "a100"}),
    )

    actions = plan(_body(job), Snapshot(), Settings(accelerator_profiles=profiles), NOW)

    created = next(a.manifest for a in actions if isinstance(a, Create) and a.manifest["kind"] == "Job")
    pod = created["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"]["gpu"] == "a100"
    assert "sized to 1 node(s) x 1 nvidia.com/gpu (a100)" in _status(actions).conditions[2].message


def test_jobs_are_looked_at_again_when_something_is_due(job: dict[str, Any]) -> None:
    from kubetune.controller.reconcile import seconds_to_next_look

    settings = Settings(progress_interval_seconds=10, resync_seconds=300)
    finished = _started(phase=Phase.SUCCEEDED).model_copy(update={"completion_time": NOW - timedelta(seconds=30)})

    assert seconds_to_next_look(_body(job), Snapshot(), _started(), settings, NOW) == 10
    assert seconds_to_next_look(_body(job), Snapshot(), _started(phase=Phase.QUEUED), settings, NOW) == 300
    assert (
        seconds_to_next_look(
            _body(job, activeDeadlineSeconds=360), Snapshot(), _started(phase=Phase.PENDING), settings, NOW
        )
        == 60
    )
    assert seconds_to_next_look(_body(job, ttlSecondsAfterFinished=100), Snapshot(), finished, settings, NOW) == 70
    assert seconds_to_next_look(_body(job, ttlSecondsAfterFinished=0), Snapshot(), finished, settings, NOW) == 0.1


def test_the_next_look_follows_the_deadline_and_ttl_the_job_started_with(job: dict[str, Any]) -> None:
    from kubetune.controller.reconcile import seconds_to_next_look

    settings = Settings(progress_interval_seconds=10, resync_seconds=300)
    job["spec"].update(activeDeadlineSeconds=360, ttlSecondsAfterFinished=100)
    started, body = _edited(job, activeDeadlineSeconds=30, ttlSecondsAfterFinished=5)
    pending = _started(phase=Phase.PENDING)
    finished = _started(phase=Phase.SUCCEEDED).model_copy(update={"completion_time": NOW - timedelta(seconds=30)})

    assert (
        seconds_to_next_look(body, Snapshot(attempts={1: _running(started_spec=started)}), pending, settings, NOW) == 60
    )
    assert seconds_to_next_look(body, Snapshot(attempts={1: _done(started)}), finished, settings, NOW) == 70


def test_progress_is_read_from_the_running_pod_of_index_0_taken_from_the_snapshot() -> None:
    job = JobState(name="demo-a1", attempt=1, suspended=False, active=2)
    worker = PodState(name="demo-a1-1-x", index=1, phase="Running", address="10.0.0.2")
    starting = PodState(name="demo-a1-0-x", index=0, phase="Pending")
    running = PodState(name="demo-a1-0-x", index=0, phase="Running", address="10.0.0.1")

    assert Attempt(job, (worker, starting)).rank0_address is None
    assert Attempt(job, (worker, running)).rank0_address == "10.0.0.1"


# ----------------------------------------------------------------------------- a spec edited under a running job


def _edited(job: dict[str, Any], **spec: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The spec recorded at the start, and the job as an API server without CEL rules lets it be edited."""
    started = {k: v for k, v in json.loads(json.dumps(job["spec"])).items() if k != "suspend"}
    body = _body(job, _started().model_copy(update={"observed_generation": 1}))
    body["spec"].update(spec)
    body["metadata"]["generation"] = 2
    return started, body


def test_every_job_made_records_the_spec_the_job_started_with(job: dict[str, Any]) -> None:
    preflight = plan(_body(job, suspend=False), Snapshot(), SETTINGS, NOW)
    retry = plan(_body(job, _started()), Snapshot(attempts={1: _failed(1, 1, "TrainingFailed")}), SETTINGS, NOW)

    made = [a.manifest for a in preflight + retry if isinstance(a, Create) and a.manifest["kind"] == "Job"]
    assert [m["metadata"]["name"] for m in made] == ["demo-preflight", "demo-a2"]
    for manifest in made:
        recorded = json.loads(manifest["metadata"]["annotations"]["kubetune.io/started-spec"])
        assert recorded == {k: v for k, v in job["spec"].items() if k != "suspend"}


def test_an_edit_of_a_fixed_field_under_a_running_attempt_is_reported_not_applied(job: dict[str, Any]) -> None:
    started, body = _edited(job, method={"type": "full"}, maxRetries=7)

    actions = plan(body, Snapshot(attempts={1: _running(started_spec=started)}), SETTINGS, NOW)

    status = _status(actions)
    valid = next(c for c in status.conditions if c.type == "Valid")
    assert (valid.status, valid.reason) == ("False", "ImmutableSpecChanged")
    assert "spec.maxRetries, spec.method changed after the job started" in valid.message
    assert "Put spec.maxRetries, spec.method back, or create a new FineTuneJob" in valid.message
    assert status.observed_generation == 1  # the generation in training, not the edited one
    assert (status.method, status.model, status.phase) == ("lora", job["spec"]["model"]["preset"], Phase.RUNNING)
    assert [a.reason for a in actions if isinstance(a, Emit)] == ["ImmutableSpecChanged", "Training"]

    body = _body(body, status)
    body["metadata"]["generation"] = 2
    again = plan(body, Snapshot(attempts={1: _running(started_spec=started)}), SETTINGS, NOW)
    assert again == []  # said once


def test_a_retry_after_an_edit_is_built_from_the_spec_in_training(job: dict[str, Any]) -> None:
    started, body = _edited(job, resources={"accelerators": 1, "nodes": 2}, maxRetries=0)

    actions = plan(body, Snapshot(attempts={1: _failed(1, 1, "TrainingFailed", started=started)}), SETTINGS, NOW)

    retry = next(a.manifest for a in actions if isinstance(a, Create) and a.manifest["metadata"]["name"] == "demo-a2")
    assert retry["spec"]["completions"] == 1  # the started spec's one node, and its retry budget
    assert _status(actions).attempts == 2


def test_suspend_still_follows_an_edit_while_fixed_fields_do_not(job: dict[str, Any]) -> None:
    started, body = _edited(job, method={"type": "full"}, suspend=True)

    actions = plan(body, Snapshot(attempts={1: _running(started_spec=started)}), SETTINGS, NOW)

    assert "suspend demo-a1 True" in _kinds(actions)


def test_an_invalid_edit_under_a_running_attempt_does_not_fail_the_job(job: dict[str, Any]) -> None:
    started, body = _edited(job, method={"type": "no-such-method"})

    actions = plan(body, Snapshot(attempts={1: _running(started_spec=started)}), SETTINGS, NOW)

    status = _status(actions)
    assert status.phase is Phase.RUNNING
    assert next(c for c in status.conditions if c.type == "Valid").reason == "ImmutableSpecChanged"


def test_an_edit_put_back_clears_the_condition(job: dict[str, Any]) -> None:
    started, body = _edited(job, method={"type": "full"})
    drifted = _status(plan(body, Snapshot(attempts={1: _running(started_spec=started)}), SETTINGS, NOW))
    body = _body(body, drifted, method=started["method"])
    body["metadata"]["generation"] = 3

    actions = plan(body, Snapshot(attempts={1: _running(started_spec=started)}), SETTINGS, NOW)

    status = _status(actions)
    assert next(c for c in status.conditions if c.type == "Valid").status == "True"
    assert status.observed_generation == 3


def _done(started: dict[str, Any]) -> Attempt:
    summary = {"status": "Succeeded", "message": "trained 40 steps", "output": {"location": "pvc://results/demo"}}
    pod = PodState(name="demo-a1-0", index=0, phase="Succeeded", exit_code=0, summary=RunSummary.from_json(summary))
    job = JobState(name="demo-a1", attempt=1, suspended=False, succeeded=1, complete=True, started_spec=started)
    return Attempt(job, (pod,))


def _valid(status: FineTuneJobStatus) -> Any:
    return next(c for c in status.conditions if c.type == "Valid")


def _at(body: dict[str, Any], status: FineTuneJobStatus, generation: int = 2, **spec: Any) -> dict[str, Any]:
    body = _body(body, status, **spec)
    body["metadata"]["generation"] = generation
    return body


def test_a_job_that_ends_under_an_edit_says_the_result_is_the_started_spec_s(job: dict[str, Any]) -> None:
    started, body = _edited(job, method={"type": "full"})
    running = _status(plan(body, Snapshot(attempts={1: _running(started_spec=started)}), SETTINGS, NOW))

    ended = _status(plan(_at(body, running), Snapshot(attempts={1: _done(started)}), SETTINGS, NOW))

    valid = _valid(ended)
    assert ended.phase is Phase.SUCCEEDED and (valid.status, valid.reason) == ("False", "ImmutableSpecChanged")
    assert "the job succeeded with the spec of generation 1" in valid.message
    assert "the pods train" not in valid.message and "retry" not in valid.message
    assert plan(_at(body, ended), Snapshot(attempts={1: _done(started)}), SETTINGS, NOW) == []


def test_an_edit_put_back_after_the_end_clears_the_condition(job: dict[str, Any]) -> None:
    started, body = _edited(job, method={"type": "full"})
    running = _status(plan(body, Snapshot(attempts={1: _running(started_spec=started)}), SETTINGS, NOW))
    ended = _status(plan(_at(body, running), Snapshot(attempts={1: _done(started)}), SETTINGS, NOW))
    body = _at(body, ended, 3, method=started["method"])

    actions = plan(body, Snapshot(attempts={1: _done(started)}), SETTINGS, NOW)

    status = _status(actions)
    assert (_valid(status).status, status.observed_generation, status.phase) == ("True", 3, Phase.SUCCEEDED)
    assert status.output is not None and status.output.location == "pvc://results/demo"
    assert not any(isinstance(a, Emit) for a in actions)
    # Once the TTL removed the Jobs there is no started spec to compare with: nothing moves.
    assert plan(_at(body, ended, 3), Snapshot(), SETTINGS, NOW) == []


def test_an_edit_after_the_end_is_reported_once(job: dict[str, Any]) -> None:
    started, body = _edited(job)
    body["metadata"]["generation"] = 1  # nothing edited yet
    ended = _status(plan(body, Snapshot(attempts={1: _done(started)}), SETTINGS, NOW))
    body = _at(body, ended, method={"type": "full"})

    actions = plan(body, Snapshot(attempts={1: _done(started)}), SETTINGS, NOW)

    status = _status(actions)
    assert (_valid(status).status, status.observed_generation) == ("False", 1)
    assert "the job succeeded with the spec of generation 1" in _valid(status).message
    assert [a.reason for a in actions if isinstance(a, Emit)] == ["ImmutableSpecChanged"]
    assert plan(_at(body, status), Snapshot(attempts={1: _done(started)}), SETTINGS, NOW) == []
