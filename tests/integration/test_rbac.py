"""The chart's RBAC holds what the operator calls and nothing else: a whole job lifecycle
(preflight, a retry, Kueue, suspend, success, TTL, deletion) runs against the emulator, and
the verbs the operator and Kopf used are compared with the rules the chart renders."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kubetune.contract import RunSummary
from kubetune.controller.cluster import KINDS

from ..unit.deploy.helm import only, rendered
from .actors import MERGE, NAMESPACE, OLD_FINALIZER, SUCCESS, Cluster, Operator, _through_preflight, eventually
from .conftest import ApiServer

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

VERBS = {"GET": "get", "POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


def _verb(request: Any) -> str:
    if request.params.get("watch") == "true":
        return "watch"
    if request.method == "GET" and request.name is None:
        return "list"
    return VERBS[str(request.method.value if hasattr(request.method, "value") else request.method).upper()]


def used_by_the_operator(apiserver: ApiServer) -> set[tuple[str, str, str]]:
    used = set()
    for request in apiserver.emulator._requests:
        agent = request.headers.get("User-Agent", "")
        if (
            request.resource is None
            or not request.resource.plural
            or not agent.startswith(("kubetune-operator/", "kopf/"))
        ):
            continue
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        used.add((request.resource.group, resource, _verb(request)))
    return used


def granted_by_the_chart() -> set[tuple[str, str, str]]:
    role = only(rendered("default"), "ClusterRole")
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


async def test_the_chart_grants_exactly_what_the_operator_calls(
    operator: Operator, cluster: Cluster, apiserver: ApiServer, job: dict[str, Any]
) -> None:
    # Preflight, a failed attempt and its retry, then success and the TTL.
    job["spec"].update(maxRetries=1, ttlSecondsAfterFinished=0)
    await cluster.submit(job)
    await _through_preflight(cluster)
    await cluster.start_pods("demo-a1")
    await cluster.finish("demo-a1", 1, RunSummary.failure("TrainingFailed", "NaN"))
    await eventually(lambda: "demo-a2" in cluster.jobs(), "the retry")
    await cluster.start_pods("demo-a2")
    await eventually(lambda: cluster.status().get("phase") == "Running", "phase Running")
    await cluster.change_spec("demo", suspend=True)
    await eventually(lambda: cluster.jobs()["demo-a2"]["spec"]["suspend"] is True, "suspended")
    await cluster.change_spec("demo", suspend=False)
    await eventually(lambda: cluster.jobs()["demo-a2"]["spec"]["suspend"] is False, "resumed")
    await cluster.finish("demo-a2", 0, SUCCESS)
    await eventually(lambda: cluster.get(("", "v1", "configmaps"), "demo-spec") is None, "the TTL to clean up")

    # A queued job: the operator deactivates its Kueue Workload.
    queued = {**job, "metadata": {"name": "queued", "namespace": NAMESPACE}}
    queued["spec"] = {**job["spec"], "queueName": "team-a", "dataset": {**job["spec"]["dataset"], "preflight": False}}
    await cluster.submit(queued)
    created = await eventually(lambda: cluster.jobs().get("queued-a1"), "the queued Job")
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": "queued-a1", "uid": created["metadata"]["uid"]}
    workload = {
        "apiVersion": "kueue.x-k8s.io/v1beta1",
        "kind": "Workload",
        "metadata": {"name": "wl", "ownerReferences": [owner]},
        "spec": {"active": True},
    }
    await cluster.call("POST", KINDS["Workload"].path(NAMESPACE), workload)
    await cluster.call("PATCH", KINDS["FineTuneJob"].path(NAMESPACE, "queued"), {"spec": {"suspend": True}}, MERGE)
    await eventually(
        lambda: cluster.get(("kueue.x-k8s.io", "v1beta1", "workloads"), "wl")["spec"]["active"] is False,
        "the Workload deactivated",
    )
    await cluster.call("DELETE", KINDS["FineTuneJob"].path(NAMESPACE, "queued"))
    await eventually(lambda: cluster.get(("kubetune.io", "v1alpha1", "finetunejobs"), "queued") is None, "deletion")
    await asyncio.sleep(0.5)

    # A job that an earlier version marked with Kopf's finalizer (it ran a Kopf daemon per
    # job): Kopf takes the finalizer off.
    marked = {**job, "metadata": {"name": "marked", "namespace": NAMESPACE, "finalizers": [OLD_FINALIZER]}}
    await cluster.submit(marked)
    await eventually(
        lambda: (
            not (cluster.get(("kubetune.io", "v1alpha1", "finetunejobs"), "marked") or {})["metadata"].get("finalizers")
        ),
        "the old finalizer taken off",
    )

    used, granted = used_by_the_operator(apiserver), granted_by_the_chart()

    assert used - granted == set(), "the operator calls what the chart does not grant"
    assert granted - used == set(), "the chart grants what the operator never calls"
