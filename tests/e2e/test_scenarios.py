"""Named scenarios against a real cluster (kind from kind-config.yaml, the CPU trainer image,
a tiny model): what the emulated API server cannot show — real pods, real DNS timing between
ranks, real kubelet termination messages, real garbage collection and evictions.

Run with `make e2e` after `make kind-up images kind-load deploy`.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from .conftest import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _job(name: str, nodes: int = 1, steps: int = 20, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"pvc": {"claimName": "models", "path": "tiny-phi3"}},
            "dataset": {
                "configMap": {"name": "quickstart-facts", "key": "facts.jsonl"},
                "format": "chat",
                "maxSeqLength": 128,
            },
            "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "targetModules": ["all-linear"]}},
            "training": {"maxSteps": steps, "learningRate": 5.0e-3, "perDeviceBatchSize": 4, "loggingInterval": 5},
            "distributed": {"strategy": "ddp" if nodes > 1 else "none"},
            "resources": {
                "nodes": nodes,
                "accelerators": 0,
                "cpu": "1",
                "memory": "3Gi",
                "sharedMemory": "256Mi",
                "nodeSelector": {"kubetune.io/trainer": "true"},
            },
            "checkpoint": {"intervalSteps": 10},
            "output": {"pvc": {"claimName": "results", "path": name, "readWriteMany": nodes > 1}},
        },
    }
    body["spec"].update(copy.deepcopy(spec))
    return body


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def test_single_node_success(cluster: Cluster) -> None:
    cluster.create(_job("single"))

    status = cluster.phase("single", "Succeeded")

    assert status["output"]["location"] == "pvc://results/single"
    assert status["attempts"] == 1
    assert status["progress"]["step"] == 20


def test_two_nodes_find_each_other_and_train(cluster: Cluster) -> None:
    """Rank 1 starts before rank 0 has a DNS record; it must wait for it, not fail."""
    cluster.create(_job("pair", nodes=2))

    status = cluster.phase("pair", "Succeeded")

    assert status["attempts"] == 1
    pods = cluster.items("Pod", "kubetune.io/finetunejob=pair,kubetune.io/role=train")
    assert len(pods) == 2


def test_a_killed_rank_fails_the_attempt_and_the_retry_resumes(cluster: Cluster) -> None:
    cluster.create(_job("killed", nodes=2, steps=200, maxRetries=2))
    cluster.wait(lambda: (cluster.status("killed").get("progress") or {}).get("step", 0) >= 15, "a checkpoint")

    rank1 = cluster.items("Pod", "kubetune.io/finetunejob=killed,kubetune.io/attempt=1")
    victim = next(p for p in rank1 if p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "1")
    cluster.rest.call(
        "DELETE",
        f"/api/v1/namespaces/{cluster.namespace}/pods/{victim['metadata']['name']}",
        body={"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0},
    )

    cluster.wait(lambda: cluster.get("Job", "killed-a2"), "the second attempt")
    status = cluster.phase("killed", "Succeeded", timeout=900)
    assert status["attempts"] == 2
    log = cluster.rest.client.call_api(
        *cluster.rest.client.param_serialize(
            "GET",
            f"/api/v1/namespaces/{cluster.namespace}/pods/"
            + next(
                p["metadata"]["name"]
                for p in cluster.items("Pod", "kubetune.io/finetunejob=killed,kubetune.io/attempt=2")
                if p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "0"
            )
            + "/log",
            auth_settings=["BearerToken"],
        )
    )
    log.read()
    assert b"resuming from" in log.data


def test_an_evicted_pod_is_a_preemption_that_costs_no_retry(cluster: Cluster) -> None:
    cluster.create(_job("evicted", steps=400, maxRetries=0))
    cluster.phase("evicted", "Running")
    pod = cluster.items("Pod", "kubetune.io/finetunejob=evicted,kubetune.io/attempt=1")[0]["metadata"]["name"]

    cluster.rest.call(
        "POST",
        f"/api/v1/namespaces/{cluster.namespace}/pods/{pod}/eviction",
        body={"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": cluster.namespace}},
    )

    cluster.wait(lambda: cluster.get("Job", "evicted-a2"), "the attempt after the eviction")
    status = cluster.status("evicted")
    assert (status["attempts"], status["preemptions"]) == (1, 1)


def test_suspend_stops_the_pods_and_resume_continues(cluster: Cluster) -> None:
    cluster.create(_job("paused", steps=300))
    cluster.phase("paused", "Running")

    cluster.patch_spec("paused", suspend=True)
    cluster.phase("paused", "Suspended")
    cluster.wait(
        lambda: (
            not [
                p
                for p in cluster.items("Pod", "kubetune.io/finetunejob=paused")
                if p["status"].get("phase") == "Running"
            ]
        ),
        "the pods to stop",
    )

    cluster.patch_spec("paused", suspend=False)
    status = cluster.phase("paused", "Succeeded", timeout=900)
    assert status["attempts"] == 1


def test_deleting_the_job_collects_its_children(cluster: Cluster) -> None:
    cluster.create(_job("doomed", steps=400))
    cluster.phase("doomed", "Running")

    cluster.rest.call("DELETE", f"/apis/kubetune.io/v1alpha1/namespaces/{cluster.namespace}/finetunejobs/doomed")

    cluster.wait(lambda: not cluster.items("Job", "kubetune.io/finetunejob=doomed"), "its Jobs to go")
    cluster.wait(lambda: not cluster.items("Pod", "kubetune.io/finetunejob=doomed"), "its pods to go")
    assert cluster.get("ConfigMap", "doomed-spec") is None


def test_an_invalid_dataset_fails_in_the_preflight(cluster: Cluster) -> None:
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "broken"},
            "data": {"train.jsonl": '{"messages": [{"role": "user"}]}\nnot json\n'},
        }
    )
    cluster.create(
        _job(
            "bad-data",
            dataset={"configMap": {"name": "broken", "key": "train.jsonl"}, "format": "chat", "preflight": True},
        )
    )

    status = cluster.phase("bad-data", "Failed", timeout=300)

    assert _condition(status, "Failed")["reason"] == "DatasetInvalid"
    assert cluster.get("Job", "bad-data-a1") is None, "no training Job for data that cannot train"
