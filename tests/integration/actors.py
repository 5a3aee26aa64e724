"""The parts a cluster plays around the operator in the integration tests: the Job
controller and the kubelet (pods for a Job, Job and pod status written over HTTP), Kueue
(admission and preemption by a Job's suspend), rank 0's /progress server, and the operator
itself in a thread of its own."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import kopf
import kubernetes
import pytest
import pytest_asyncio
from aiohttp import web

from kubetune import contract
from kubetune.api.enums import TrainerPhase
from kubetune.contract import RunSummary, SummaryOutput
from kubetune.controller import handlers  # noqa: F401  (registers the handlers)
from kubetune.controller.cluster import KINDS, Rest
from kubetune.controller.handlers import memo_for
from kubetune.controller.settings import Settings
from kubetune_trainer.summary import termination_message

if TYPE_CHECKING:
    from .conftest import ApiServer

NAMESPACE = "default"
FTJ = ("kubetune.io", "v1alpha1", "finetunejobs")
JOBS = ("batch", "v1", "jobs")
PODS = ("", "v1", "pods")
MERGE = "application/merge-patch+json"
OLD_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"
"""What operators that ran a Kopf daemon per job put on every FineTuneJob."""


@kopf.on.login()
def login_to_the_emulator(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The client library read KUBECONFIG when it was imported, before a test set it; Kopf's
    own kubeconfig reader reads it now."""
    return kopf.login_with_kubeconfig(**kwargs)


# ----------------------------------------------------------------------------- the parts a cluster plays


class Progress:
    """Rank 0's GET /progress, with figures the test sets: the contract's model, served as the
    trainer's ProgressServer serves it."""

    def __init__(self) -> None:
        self.report = contract.Progress(phase=TrainerPhase.STARTING)
        self.requests = 0
        self.port = 0

    async def serve(self) -> AsyncIterator[None]:
        async def answer(request: web.Request) -> web.Response:
            self.requests += 1
            body = self.report.model_dump_json(by_alias=True, exclude_none=True)
            return web.Response(text=body, content_type="application/json")

        app = web.Application()
        app.router.add_get("/progress", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        try:
            yield
        finally:
            await runner.cleanup()


@dataclass
class Cluster:
    """The Job controller, the kubelet and Kueue, over HTTP like the real ones."""

    apiserver: ApiServer
    rest: Rest
    made: dict[str, list[str]] = field(default_factory=dict)

    async def call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        return await asyncio.to_thread(self.rest.call, method, path, body, (), content_type)

    def get(self, kind: tuple[str, str, str], name: str) -> dict[str, Any] | None:
        return self.apiserver.emulator.get_object(*kind, NAMESPACE, name)

    def jobs(self) -> dict[str, dict[str, Any]]:
        return {j["metadata"]["name"]: j for j in self.apiserver.emulator.list_objects(*JOBS, NAMESPACE)}

    async def submit(self, body: dict[str, Any]) -> None:
        await self.call("POST", KINDS["FineTuneJob"].path(NAMESPACE), body)

    async def change_spec(self, name: str, **spec: Any) -> None:
        await self.call("PATCH", KINDS["FineTuneJob"].path(NAMESPACE, name), {"spec": spec}, MERGE)

    async def start_pods(self, job_name: str, phase: str = "Running") -> list[str]:
        """What the Job controller and kubelet do for an unsuspended Indexed Job."""
        job = self.jobs()[job_name]
        template = job["spec"]["template"]
        pods = []
        for index in range(job["spec"]["completions"]):
            name = f"{job_name}-{index}-x{len(self.made.get(job_name, []))}"
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "labels": {**template["metadata"]["labels"], "batch.kubernetes.io/job-name": job_name},
                    "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
                    "ownerReferences": [
                        {"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": job["metadata"]["uid"]}
                    ],
                },
                "spec": copy.deepcopy(template["spec"]),
            }
            await self.call("POST", KINDS["Pod"].path(NAMESPACE), pod)
            await self.set_pod(name, phase, {"running": {}} if phase == "Running" else {"waiting": {}})
            pods.append(name)
        self.made[job_name] = pods
        await self.set_job(job_name, {"active": len(pods), "startTime": "2026-11-28T10:00:00Z"})
        return pods

    async def set_pod(self, name: str, phase: str, state: dict[str, Any], conditions: list[Any] | None = None) -> None:
        status = {
            "phase": phase,
            "podIP": "127.0.0.1",
            "conditions": conditions or [],
            "containerStatuses": [{"name": "trainer", "state": state}],
        }
        await self.call("PATCH", KINDS["Pod"].path(NAMESPACE, name, "status"), {"status": status}, MERGE)

    async def set_job(self, name: str, status: dict[str, Any]) -> None:
        await self.call("PATCH", KINDS["Job"].path(NAMESPACE, name, "status"), {"status": status}, MERGE)

    async def finish(self, job_name: str, exit_code: int, summary: RunSummary, **pod_conditions: str) -> None:
        """Every pod of the Job terminates (rank 0 with the summary's termination message, as
        the trainer writes it); the Job completes or fails."""
        conditions = [{"type": t, "status": "True", "reason": r} for t, r in pod_conditions.items()]
        for name in self.made[job_name]:
            terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error"}
            if name.split("-x")[0].endswith("-0"):
                terminated["message"] = termination_message(summary)
            await self.set_pod(
                name, "Succeeded" if exit_code == 0 else "Failed", {"terminated": terminated}, conditions
            )
        condition = (
            {"type": "Complete", "status": "True"}
            if exit_code == 0
            else {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "a pod failed"}
        )
        await self.set_job(job_name, {"active": 0, "conditions": [condition]})

    def status(self, name: str = "demo") -> dict[str, Any]:
        job = self.get(FTJ, name) or {}
        return job.get("status") or {}

    def reasons(self, name: str = "demo") -> list[str]:
        events = self.apiserver.emulator.list_objects("", "v1", "events", NAMESPACE)
        mine = [e for e in events if e["involvedObject"]["name"] == name]
        return [e["reason"] for e in sorted(mine, key=lambda e: int(e["metadata"]["resourceVersion"]))]


async def eventually(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll until `check` returns something truthy; fail with `what` after the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Operator:
    """The operator in a thread with its own event loop, as in a pod: Kopf cancels every task
    of its loop when it stops, and the emulator must outlive a restart."""

    settings: Settings
    apiserver: ApiServer
    thread: threading.Thread | None = None
    stop: threading.Event | None = None

    async def start(self) -> None:
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(
            config_file=str(self.apiserver.kubeconfig), client_configuration=configuration
        )
        memo = memo_for(self.settings, kubernetes.client.ApiClient(configuration))
        self.stop, ready = threading.Event(), threading.Event()
        operator = kopf.operator(
            standalone=True, clusterwide=False, namespaces=[NAMESPACE], memo=memo, stop_flag=self.stop, ready_flag=ready
        )
        self.thread = threading.Thread(target=asyncio.run, args=(operator,), name="operator", daemon=True)
        self.thread.start()
        assert await asyncio.to_thread(ready.wait, 20), "the operator did not start"

    async def halt(self) -> None:
        assert self.stop is not None and self.thread is not None
        self.stop.set()
        await asyncio.to_thread(self.thread.join, 30)
        assert not self.thread.is_alive(), "the operator did not stop"


# ----------------------------------------------------------------------------- fixtures


@pytest_asyncio.fixture
async def progress() -> AsyncIterator[Progress]:
    server = Progress()
    async for _ in server.serve():
        yield server


@pytest_asyncio.fixture
async def operator(apiserver: ApiServer, progress: Progress) -> AsyncIterator[Operator]:
    settings = Settings(
        progress_port=progress.port,
        progress_interval_seconds=0.3,
        metrics_port=0,
        health_port=0,
        error_backoff_seconds=0.2,
    )
    running = Operator(settings, apiserver)
    await running.start()
    try:
        yield running
    finally:
        await running.halt()


@pytest.fixture
def cluster(apiserver: ApiServer, kube_client: kubernetes.client.ApiClient) -> Cluster:
    return Cluster(apiserver, Rest(kube_client))


def _manifest(job: dict[str, Any], **spec: Any) -> dict[str, Any]:
    body = copy.deepcopy(job)
    body["spec"].update(spec)
    return body


SUCCESS = RunSummary(
    status="Succeeded", message="trained 40 steps", output=SummaryOutput(location="pvc://results/demo")
)


async def _through_preflight(cluster: Cluster) -> None:
    await eventually(lambda: "demo-preflight" in cluster.jobs(), "the preflight Job")
    await cluster.start_pods("demo-preflight")
    await cluster.finish("demo-preflight", 0, RunSummary(status="Succeeded", message="data checked"))
    await eventually(lambda: "demo-a1" in cluster.jobs(), "the first training Job")
