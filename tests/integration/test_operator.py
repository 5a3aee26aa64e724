"""The real operator (Kopf, in process) against the emulated API server on loopback.

The tests play the parts a cluster would (see actors.py): the Job controller and the
kubelet, Kueue, and the trainer's rank 0.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest

from kubetune import contract
from kubetune.api.enums import TrainerPhase
from kubetune.contract import Figures, RunSummary
from kubetune.controller.cluster import KINDS
from kubetune.controller.settings import Settings
from kubetune_trainer.summary import termination_message

from .actors import (
    FTJ,
    MERGE,
    NAMESPACE,
    OLD_FINALIZER,
    PODS,
    SUCCESS,
    Cluster,
    Operator,
    Progress,
    _manifest,
    _through_preflight,
    eventually,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


# ----------------------------------------------------------------------------- the scenarios


async def test_a_job_runs_from_creation_to_success(
    operator: Operator, cluster: Cluster, progress: Progress, job: dict[str, Any]
) -> None:
    await cluster.submit(job)

    await eventually(lambda: cluster.get(("", "v1", "configmaps"), "demo-spec"), "the spec ConfigMap")
    await eventually(lambda: cluster.get(("", "v1", "services"), "demo"), "the rendezvous Service")
    await _through_preflight(cluster)
    assert cluster.status()["attempts"] == 1

    await cluster.start_pods("demo-a1")
    await eventually(lambda: cluster.status().get("phase") == "Running", "phase Running")
    progress.report = contract.Progress(
        step=10, total_steps=40, loss=1.25, phase=TrainerPhase.TRAINING, tokens_per_second=900.0
    )
    mirrored = await eventually(lambda: cluster.status().get("progress", {}).get("step") == 10, "progress mirrored")
    assert mirrored and cluster.status()["progress"]["percent"] == 25.0

    await cluster.finish("demo-a1", 0, SUCCESS)

    await eventually(lambda: cluster.status().get("phase") == "Succeeded", "phase Succeeded")
    status = cluster.status()
    assert status["output"]["location"] == "pvc://results/demo"
    assert status["completionTime"] and status["startTime"]
    assert cluster.reasons()[:2] == ["Preflight", "Creating"] and cluster.reasons()[-1] == "Completed"


async def test_a_failed_attempt_is_retried_and_counted(
    operator: Operator, cluster: Cluster, job: dict[str, Any]
) -> None:
    await cluster.submit(_manifest(job, maxRetries=1, dataset={**job["spec"]["dataset"], "preflight": False}))
    await eventually(lambda: "demo-a1" in cluster.jobs(), "attempt 1")
    await cluster.start_pods("demo-a1")

    await cluster.finish("demo-a1", 1, RunSummary.failure("TrainingFailed", "NaN loss"))

    await eventually(lambda: "demo-a2" in cluster.jobs(), "attempt 2")
    assert cluster.status()["attempts"] == 2
    # The failed attempt's Job and its stopped pods stay, for their logs.
    assert "demo-a1" in cluster.jobs()
    assert cluster.apiserver.emulator.list_objects(*PODS, NAMESPACE, {"kubetune.io/attempt": "1"})

    await cluster.start_pods("demo-a2")
    await cluster.finish("demo-a2", 1, RunSummary.failure("TrainingFailed", "NaN loss again"))

    await eventually(lambda: cluster.status().get("phase") == "Failed", "retries exhausted")
    failed = next(c for c in cluster.status()["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "RetriesExhausted" and "NaN loss again" in failed["message"]
    assert "demo-a3" not in cluster.jobs()


async def test_preemption_starts_again_without_counting(
    operator: Operator, cluster: Cluster, job: dict[str, Any]
) -> None:
    await cluster.submit(_manifest(job, maxRetries=0, dataset={**job["spec"]["dataset"], "preflight": False}))
    await eventually(lambda: "demo-a1" in cluster.jobs(), "attempt 1")
    await cluster.start_pods("demo-a1")

    interrupted = RunSummary.failure("Interrupted", "SIGTERM; checkpoint at step 12")
    await cluster.finish("demo-a1", 44, interrupted, DisruptionTarget="PreemptionByScheduler")

    await eventually(lambda: "demo-a2" in cluster.jobs(), "the attempt after the preemption")
    status = cluster.status()
    assert (status["attempts"], status["preemptions"]) == (1, 1)
    assert status["phase"] in ("Queued", "Pending")  # waiting for room again, not failed
    await eventually(lambda: "Preempted" in cluster.reasons(), "the Preempted Event")


async def test_a_job_s_end_is_judged_from_its_pods_as_the_api_holds_them(
    operator: Operator, cluster: Cluster, job: dict[str, Any]
) -> None:
    """The pods' watch and the Jobs' watch keep no order between them: the Job's failure may
    arrive before its pod's DisruptionTarget condition (here that pod event is lost). The
    keeper reads a Job's end with its pods from the API before it counts anything, so the
    eviction is a preemption, not a failed attempt (found by the container tier)."""
    await cluster.submit(_manifest(job, maxRetries=0, dataset={**job["spec"]["dataset"], "preflight": False}))
    await eventually(lambda: "demo-a1" in cluster.jobs(), "attempt 1")
    await cluster.start_pods("demo-a1")
    await eventually(lambda: cluster.status().get("phase") == "Running", "phase Running")
    cluster.apiserver.emulator.miss_events("pods", 1)

    interrupted = RunSummary.failure("Interrupted", "SIGTERM; checkpoint at step 12")
    await cluster.finish("demo-a1", 44, interrupted, DisruptionTarget="EvictionByEvictionAPI")

    await eventually(lambda: "demo-a2" in cluster.jobs(), "the attempt after the eviction")
    status = cluster.status()
    assert (status["attempts"], status["preemptions"]) == (1, 1), status


async def test_failed_attempts_jobs_are_kept_up_to_the_bound(
    apiserver: Any, progress: Progress, cluster: Cluster, job: dict[str, Any]
) -> None:
    settings = Settings(
        progress_port=progress.port, metrics_port=0, health_port=0, error_backoff_seconds=0.2, kept_failed_attempts=1
    )
    operator = Operator(settings, apiserver)
    await operator.start()
    try:
        await cluster.submit(_manifest(job, maxRetries=3, dataset={**job["spec"]["dataset"], "preflight": False}))
        for attempt in (1, 2):
            await eventually(lambda: f"demo-a{attempt}" in cluster.jobs(), f"attempt {attempt}")  # noqa: B023
            await cluster.start_pods(f"demo-a{attempt}")
            await cluster.finish(f"demo-a{attempt}", 1, RunSummary.failure("TrainingFailed", "x"))

        await eventually(lambda: set(cluster.jobs()) == {"demo-a2", "demo-a3"}, "the oldest failed attempt deleted")
    finally:
        await operator.halt()


async def test_a_disrupted_preflight_starts_again_without_counting(
    operator: Operator, cluster: Cluster, job: dict[str, Any]
) -> None:
    await cluster.submit(job)
    first = await eventually(lambda: cluster.jobs().get("demo-preflight"), "the preflight")
    await cluster.start_pods("demo-preflight")

    evicted = RunSummary.failure("Interrupted", "SIGTERM")
    await cluster.finish("demo-preflight", 143, evicted, DisruptionTarget="EvictionByEvictionAPI")

    again = await eventually(
        lambda: (j := cluster.jobs().get("demo-preflight")) and j["metadata"]["uid"] != first["metadata"]["uid"] and j,
        "a new preflight",
    )
    assert not again.get("status", {}).get("conditions")
    status = cluster.status()
    assert (status["phase"], status.get("attempts", 0), status.get("preemptions", 0)) == ("Pending", 0, 0)
    await eventually(lambda: "Preempted" in cluster.reasons(), "the Preempted Event")
    await cluster.start_pods("demo-preflight")
    await cluster.finish("demo-preflight", 0, RunSummary(status="Succeeded", message="data checked"))
    await eventually(lambda: "demo-a1" in cluster.jobs(), "the first training Job")
    assert cluster.status()["attempts"] == 1


async def test_a_preflight_that_failed_for_a_passing_reason_runs_again_counted(
    operator: Operator, cluster: Cluster, job: dict[str, Any]
) -> None:
    await cluster.submit(_manifest(job, maxRetries=1))
    first = await eventually(lambda: cluster.jobs().get("demo-preflight"), "the preflight")
    await cluster.start_pods("demo-preflight")

    timed_out = RunSummary.failure("TrainingFailed", "https://data.example/x.jsonl: timed out")
    await cluster.finish("demo-preflight", 1, timed_out)

    await eventually(
        lambda: (j := cluster.jobs().get("demo-preflight")) and j["metadata"]["uid"] != first["metadata"]["uid"],
        "a new preflight",
    )
    status = cluster.status()
    assert (status["phase"], status.get("attempts", 0), status["preflightRetries"]) == ("Pending", 0, 1)
    await cluster.start_pods("demo-preflight")
    await cluster.finish("demo-preflight", 1, timed_out)

    await eventually(lambda: cluster.status().get("phase") == "Failed", "retries exhausted")
    failed = next(c for c in cluster.status()["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "RetriesExhausted" and "timed out" in failed["message"]
    assert set(cluster.jobs()) == {"demo-preflight"}


async def test_pods_that_end_before_the_job_s_condition_do_not_send_the_job_back(
    operator: Operator, cluster: Cluster, job: dict[str, Any]
) -> None:
    await cluster.submit(_manifest(job, dataset={**job["spec"]["dataset"], "preflight": False}))
    await eventually(lambda: "demo-a1" in cluster.jobs(), "attempt 1")
    (pod,) = await cluster.start_pods("demo-a1")
    await eventually(lambda: cluster.status().get("phase") == "Running", "phase Running")
    phases = []
    watcher = asyncio.create_task(_record_phases(cluster, phases))

    # The kubelet reports the pod's end; the Job controller writes the Job's condition later.
    terminated = {"exitCode": 0, "reason": "Completed", "message": termination_message(SUCCESS)}
    await cluster.set_pod(pod, "Succeeded", {"terminated": terminated})
    await cluster.set_job("demo-a1", {"active": 0, "succeeded": 1})
    await asyncio.sleep(1.0)  # the operator has looked at the ended pod a few times
    await cluster.set_job("demo-a1", {"conditions": [{"type": "Complete", "status": "True"}]})
    await eventually(lambda: cluster.status().get("phase") == "Succeeded", "phase Succeeded")
    watcher.cancel()

    assert "Pending" not in phases[phases.index("Running") :]
    assert "Starting" not in cluster.reasons()[cluster.reasons().index("Training") :]


async def _record_phases(cluster: Cluster, phases: list[str]) -> None:
    while True:
        phase = cluster.status().get("phase")
        if not phases or phases[-1] != phase:
            phases.append(phase)
        await asyncio.sleep(0.01)


async def test_a_run_that_ends_before_a_progress_poll_keeps_its_final_figures(
    operator: Operator, cluster: Cluster, progress: Progress, job: dict[str, Any]
) -> None:
    await cluster.submit(_manifest(job, dataset={**job["spec"]["dataset"], "preflight": False}))
    await eventually(lambda: "demo-a1" in cluster.jobs(), "attempt 1")
    await cluster.start_pods("demo-a1")
    metrics = {"steps": 40, "trainLoss": 0.41, "evalLoss": 0.52, "evalAccuracy": 0.875, "precision": "fp32"}

    await cluster.finish("demo-a1", 0, SUCCESS.model_copy(update={"metrics": Figures.model_validate(metrics)}))

    await eventually(lambda: cluster.status().get("phase") == "Succeeded", "phase Succeeded")
    status = cluster.status()
    assert (status["progress"]["step"], status["progress"]["loss"], status["progress"]["evalLoss"]) == (40, 0.41, 0.52)
    assert status["metrics"] == {"steps": 40, "trainLoss": 0.41, "evalLoss": 0.52, "evalAccuracy": 0.875}


async def test_an_edit_of_a_fixed_field_while_training_is_reported_and_not_applied(
    operator: Operator, cluster: Cluster, job: dict[str, Any]
) -> None:
    """The emulator, like an API server without the CRD's CEL rules, lets the edit through."""
    await cluster.submit(_manifest(job, maxRetries=1, dataset={**job["spec"]["dataset"], "preflight": False}))
    await eventually(lambda: "demo-a1" in cluster.jobs(), "attempt 1")
    await cluster.start_pods("demo-a1")
    await eventually(lambda: cluster.status().get("phase") == "Running", "phase Running")
    spec_before = cluster.get(("", "v1", "configmaps"), "demo-spec")

    await cluster.change_spec("demo", method={"type": "full"}, resources={"nodes": 2})

    def valid() -> dict[str, Any]:
        return next((c for c in cluster.status().get("conditions", []) if c["type"] == "Valid"), {})

    await eventually(lambda: valid().get("status") == "False", "the Valid condition to say so")
    status = cluster.status()
    assert valid()["reason"] == "ImmutableSpecChanged"
    assert "spec.method, spec.resources changed after the job started" in valid()["message"]
    assert (status["observedGeneration"], status["method"], status["phase"]) == (1, "lora", "Running")
    await eventually(lambda: "ImmutableSpecChanged" in cluster.reasons(), "the ImmutableSpecChanged Event")

    await cluster.finish("demo-a1", 1, RunSummary.failure("TrainingFailed", "NaN loss"))

    retry = await eventually(lambda: cluster.jobs().get("demo-a2"), "attempt 2")
    assert retry["spec"]["completions"] == 1, "the retry is built from the spec in training"
    assert cluster.get(("", "v1", "configmaps"), "demo-spec") == spec_before
    assert cluster.status()["method"] == "lora"

    await cluster.start_pods("demo-a2")
    await cluster.finish("demo-a2", 0, SUCCESS)

    await eventually(lambda: cluster.status().get("phase") == "Succeeded", "phase Succeeded")
    # The result is the started spec's: the condition stays, and says so without a pod or a retry.
    assert valid()["status"] == "False" and "the job succeeded with the spec of generation 1" in valid()["message"]
    assert "the pods train" not in valid()["message"]

    await cluster.change_spec("demo", method={"type": "lora"}, resources=None)
    await eventually(lambda: valid().get("status") == "True", "the condition cleared once the edit is put back")
    assert cluster.status()["phase"] == "Succeeded"


async def test_a_bad_dataset_fails_in_the_preflight_before_any_accelerator(
    operator: Operator, cluster: Cluster, job: dict[str, Any]
) -> None:
    await cluster.submit(job)
    await eventually(lambda: "demo-preflight" in cluster.jobs(), "the preflight")
    await cluster.start_pods("demo-preflight")

    invalid = RunSummary.failure("DatasetInvalid", "train.jsonl line 3: no messages")
    await cluster.finish("demo-preflight", 42, invalid)

    await eventually(lambda: cluster.status().get("phase") == "Failed", "phase Failed")
    failed = next(c for c in cluster.status()["conditions"] if c["type"] == "Failed")
    assert (failed["reason"], failed["message"]) == ("DatasetInvalid", "train.jsonl line 3: no messages")
    assert set(cluster.jobs()) == {"demo-preflight"}
    assert "DatasetInvalid" in cluster.reasons()


async def test_an_invalid_spec_never_reaches_a_pod(operator: Operator, cluster: Cluster, job: dict[str, Any]) -> None:
    await cluster.submit(_manifest(job, method={"type": "full", "lora": {"r": 8}}))

    await eventually(lambda: cluster.status().get("phase") == "Failed", "phase Failed")
    failed = next(c for c in cluster.status()["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec" and "spec." in failed["message"]
    assert cluster.jobs() == {}
    assert cluster.get(("", "v1", "configmaps"), "demo-spec") is None


async def test_suspend_and_resume(operator: Operator, cluster: Cluster, job: dict[str, Any]) -> None:
    await cluster.submit(_manifest(job, dataset={**job["spec"]["dataset"], "preflight": False}))
    await eventually(lambda: "demo-a1" in cluster.jobs(), "attempt 1")
    await cluster.start_pods("demo-a1")
    await eventually(lambda: cluster.status().get("phase") == "Running", "phase Running")

    await cluster.change_spec("demo", suspend=True)
    await eventually(lambda: cluster.jobs()["demo-a1"]["spec"]["suspend"] is True, "the Job suspended")
    await cluster.set_job("demo-a1", {"active": 0})
    await eventually(lambda: cluster.status().get("phase") == "Suspended", "phase Suspended")

    await cluster.change_spec("demo", suspend=False)
    await eventually(lambda: cluster.jobs()["demo-a1"]["spec"]["suspend"] is False, "the Job resumed")
    assert cluster.status()["attempts"] == 1


async def test_kueue_admits_preempts_and_the_operator_deactivates_its_workload(
    operator: Operator, cluster: Cluster, job: dict[str, Any]
) -> None:
    await cluster.submit(_manifest(job, queueName="team-a", dataset={**job["spec"]["dataset"], "preflight": False}))
    created = await eventually(lambda: cluster.jobs().get("demo-a1"), "attempt 1")
    assert created["spec"]["suspend"] is True
    assert created["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    await eventually(lambda: cluster.status().get("phase") == "Queued", "phase Queued")
    workload = {
        "apiVersion": "kueue.x-k8s.io/v1beta1",
        "kind": "Workload",
        "metadata": {
            "name": "job-demo-a1-1234",
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": "demo-a1", "uid": created["metadata"]["uid"]}
            ],
        },
        "spec": {"active": True, "queueName": "team-a"},
    }
    await cluster.call("POST", KINDS["Workload"].path(NAMESPACE), workload)

    # Kueue admits: it unsuspends the Job.
    await cluster.call("PATCH", KINDS["Job"].path(NAMESPACE, "demo-a1"), {"spec": {"suspend": False}}, MERGE)
    await cluster.start_pods("demo-a1")
    await eventually(lambda: cluster.status().get("phase") == "Running", "phase Running once admitted")

    # Kueue preempts: it suspends the Job again; the job waits in the queue, it has not failed.
    await cluster.call("PATCH", KINDS["Job"].path(NAMESPACE, "demo-a1"), {"spec": {"suspend": True}}, MERGE)
    await eventually(lambda: cluster.status().get("phase") == "Queued", "phase Queued after preemption")
    assert cluster.jobs()["demo-a1"]["spec"]["suspend"] is True

    # The user suspends: the operator deactivates the Workload and never touches the Job's suspend.
    await cluster.change_spec("demo", suspend=True)
    await eventually(
        lambda: cluster.get(("kueue.x-k8s.io", "v1beta1", "workloads"), "job-demo-a1-1234")["spec"]["active"] is False,
        "the Workload deactivated",
    )
    job_writes = [
        w
        for w in cluster.apiserver.emulator.writes
        if w.plural == "jobs" and w.method == "PATCH" and w.subresource is None
    ]
    assert len(job_writes) == 2, "only Kueue (the test) patched the Job"


async def test_a_queued_job_whose_queue_name_is_edited_away_still_suspends_through_its_workload(
    operator: Operator, cluster: Cluster, job: dict[str, Any]
) -> None:
    """The emulator, like an API server without the CEL rules, lets the edit through: the Job
    was made for the queue, and Kueue still owns its suspend."""
    await cluster.submit(_manifest(job, queueName="team-a", dataset={**job["spec"]["dataset"], "preflight": False}))
    created = await eventually(lambda: cluster.jobs().get("demo-a1"), "attempt 1")
    workload = {
        "apiVersion": "kueue.x-k8s.io/v1beta1",
        "kind": "Workload",
        "metadata": {
            "name": "job-demo-a1-1234",
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": "demo-a1", "uid": created["metadata"]["uid"]}
            ],
        },
        "spec": {"active": True, "queueName": "team-a"},
    }
    await cluster.call("POST", KINDS["Workload"].path(NAMESPACE), workload)
    await cluster.call("PATCH", KINDS["Job"].path(NAMESPACE, "demo-a1"), {"spec": {"suspend": False}}, MERGE)
    await cluster.start_pods("demo-a1")
    await eventually(lambda: cluster.status().get("phase") == "Running", "phase Running once admitted")

    await cluster.change_spec("demo", queueName=None, suspend=True)

    await eventually(
        lambda: cluster.get(("kueue.x-k8s.io", "v1beta1", "workloads"), "job-demo-a1-1234")["spec"]["active"] is False,
        "the Workload deactivated",
    )
    assert cluster.jobs()["demo-a1"]["spec"]["suspend"] is False, "the operator left the Job's suspend to Kueue"


async def test_a_restarted_operator_creates_nothing_twice(
    operator: Operator, cluster: Cluster, job: dict[str, Any]
) -> None:
    await cluster.submit(_manifest(job, dataset={**job["spec"]["dataset"], "preflight": False}))
    await eventually(lambda: "demo-a1" in cluster.jobs(), "attempt 1")
    await operator.halt()

    await operator.start()
    await cluster.start_pods("demo-a1")
    await eventually(lambda: cluster.status().get("phase") == "Running", "phase Running after the restart")
    await operator.halt()
    await operator.start()
    await asyncio.sleep(1.0)  # the restarted keeper has reconciled a few times by now

    creations = [
        w
        for w in cluster.apiserver.emulator.writes
        if w.method == "POST" and w.plural in ("jobs", "configmaps", "services")
    ]
    assert sorted(w.plural for w in creations) == ["configmaps", "jobs", "services"]
    assert cluster.status()["attempts"] == 1


async def test_the_operator_reads_back_nothing_it_wrote_and_marks_nothing(
    operator: Operator, cluster: Cluster, job: dict[str, Any]
) -> None:
    """What the operator knows of a FineTuneJob comes from its watch event and from its own
    status writes' answers: from creation to success it never reads the job by name, and
    writes only its status (no finalizer, no bookkeeping of Kopf's)."""
    await cluster.submit(_manifest(job, dataset={**job["spec"]["dataset"], "preflight": False}))
    await eventually(lambda: "demo-a1" in cluster.jobs(), "attempt 1")
    await cluster.start_pods("demo-a1")
    await eventually(lambda: cluster.status().get("phase") == "Running", "phase Running")
    await cluster.finish("demo-a1", 0, SUCCESS)
    await eventually(lambda: cluster.status().get("phase") == "Succeeded", "phase Succeeded")

    own = [
        r
        for r in cluster.apiserver.emulator._requests
        if r.resource is not None
        and r.resource.plural == "finetunejobs"
        and r.headers.get("User-Agent", "").startswith(("kubetune-operator/", "kopf/"))
    ]
    methods = [(str(getattr(r.method, "value", r.method)).upper(), r.name, r.subresource) for r in own]
    assert not [m for m in methods if m[0] == "GET" and m[1] is not None], "no read of the job by name"
    assert {m for m in methods if m[0] != "GET"} == {("PATCH", "demo", "status")}
    body = cluster.get(FTJ, "demo")
    assert body is not None and not body["metadata"].get("finalizers")
    assert "last-handled-configuration" not in body["status"].get("kopf", {})


async def test_a_job_marked_by_an_earlier_version_can_be_deleted(
    operator: Operator, cluster: Cluster, job: dict[str, Any]
) -> None:
    marked = _manifest(job, dataset={**job["spec"]["dataset"], "preflight": False})
    marked["metadata"]["finalizers"] = [OLD_FINALIZER]
    await cluster.submit(marked)
    await eventually(lambda: "demo-a1" in cluster.jobs(), "attempt 1")

    await cluster.call("DELETE", KINDS["FineTuneJob"].path(NAMESPACE, "demo"))

    await eventually(lambda: cluster.get(FTJ, "demo") is None, "the FineTuneJob gone")


async def test_deleting_the_job_removes_its_children(operator: Operator, cluster: Cluster, job: dict[str, Any]) -> None:
    await cluster.submit(_manifest(job, dataset={**job["spec"]["dataset"], "preflight": False}))
    await eventually(lambda: "demo-a1" in cluster.jobs(), "attempt 1")
    await cluster.start_pods("demo-a1")

    await cluster.call("DELETE", KINDS["FineTuneJob"].path(NAMESPACE, "demo"))

    await eventually(lambda: cluster.get(FTJ, "demo") is None, "the FineTuneJob gone")
    await eventually(lambda: not cluster.jobs(), "its Jobs collected")
    assert not cluster.apiserver.emulator.list_objects(*PODS, NAMESPACE)
    assert cluster.get(("", "v1", "configmaps"), "demo-spec") is None


async def test_progress_is_written_at_most_once_per_interval(
    operator: Operator, cluster: Cluster, progress: Progress, job: dict[str, Any]
) -> None:
    await cluster.submit(_manifest(job, dataset={**job["spec"]["dataset"], "preflight": False}))
    await eventually(lambda: "demo-a1" in cluster.jobs(), "attempt 1")
    await cluster.start_pods("demo-a1")
    await eventually(lambda: cluster.status().get("phase") == "Running", "phase Running")
    writes = cluster.apiserver.emulator.writes
    before, polls_before, started = len(writes), progress.requests, time.monotonic()

    for step in range(1, 41):  # the trainer reports far more often than the interval
        progress.report = contract.Progress(step=step, total_steps=40, loss=2.0 / step, phase=TrainerPhase.TRAINING)
        await asyncio.sleep(0.05)
    await eventually(lambda: cluster.status().get("progress", {}).get("step") == 40, "the last figures")
    elapsed = time.monotonic() - started

    status_writes = [w for w in writes[before:] if w.plural == "finetunejobs" and w.subresource == "status"]
    polls = progress.requests - polls_before
    assert polls >= 2, "progress was polled while running"
    # A pass may have polled just before the count began and write just after it.
    assert len(status_writes) <= polls + 1, "no more than one status write per poll of rank 0"
    interval = operator.settings.progress_interval_seconds
    assert polls <= 1 + elapsed / interval, "polls are spaced by the progress interval"


def _verbs(requests: list[Any]) -> Counter[str]:
    """The operator's requests (its own and Kopf's) by Kubernetes verb, watches left out."""
    verbs: Counter[str] = Counter()
    for request in requests:
        agent = request.headers.get("User-Agent", "")
        if request.resource is None or not agent.startswith(("kubetune-operator/", "kopf/")):
            continue
        method = str(getattr(request.method, "value", request.method)).upper()
        if request.params.get("watch") == "true":
            continue
        verbs[("get" if request.name else "list") if method == "GET" else method.lower()] += 1
    return verbs


async def test_a_running_job_s_passes_neither_list_nor_read(
    operator: Operator, cluster: Cluster, progress: Progress, job: dict[str, Any]
) -> None:
    """In steady state the keeper plans from what the watch delivered: each progress interval
    it polls rank 0 and writes the status when the figures moved, and asks the API server
    for nothing."""
    await cluster.submit(_manifest(job, dataset={**job["spec"]["dataset"], "preflight": False}))
    await eventually(lambda: "demo-a1" in cluster.jobs(), "attempt 1")
    await cluster.start_pods("demo-a1")
    await eventually(lambda: cluster.status().get("phase") == "Running", "phase Running")
    requests = cluster.apiserver.emulator._requests
    await asyncio.sleep(0.5)  # the passes the pods' events woke are over
    before, polls_before = len(requests), progress.requests

    for step in range(1, 21):
        progress.report = contract.Progress(step=step, total_steps=40, loss=2.0 / step, phase=TrainerPhase.TRAINING)
        await asyncio.sleep(0.1)

    verbs, polls = _verbs(requests[before:]), progress.requests - polls_before
    assert polls >= 3, "progress was polled while running"
    assert set(verbs) == {"patch"}, f"only status writes, found {dict(verbs)}"
    assert verbs["patch"] <= polls + 1, "a status write per poll at most (one may have polled before the count)"


async def test_a_job_the_keeper_created_is_assessed_without_waiting_for_its_event(
    operator: Operator, cluster: Cluster, job: dict[str, Any]
) -> None:
    """The keeper knows the Jobs it made from the API's answer; it plans again from them at
    once, not when (or if) the watch brings their events."""
    cluster.apiserver.emulator.miss_events("jobs", 1)  # the created Job's ADDED event never comes

    await cluster.submit(_manifest(job, queueName="team-a", dataset={**job["spec"]["dataset"], "preflight": False}))

    await eventually(lambda: cluster.status().get("phase") == "Queued", "phase Queued", timeout=5)
