"""A real cluster for the e2e suite: the current kubeconfig context, with the chart deployed
(`make kind-up images kind-load deploy`). Without one, every e2e test is skipped and says why.

Each test module gets a namespace of its own with the claims the jobs use, and a tiny model
made inside the cluster by the CPU trainer image (no model hub is needed).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.controller.cluster import KINDS, Rest

REPO = Path(__file__).resolve().parents[2]
TRAINER_IMAGE = os.environ.get("KUBETUNE_E2E_TRAINER_IMAGE", "ghcr.io/kubetune/trainer:0.1.0-cpu")
MERGE = "application/merge-patch+json"


class Cluster:
    """The API calls the scenarios make, and waiting for what they expect."""

    def __init__(self, rest: Rest, namespace: str) -> None:
        self.rest, self.namespace = rest, namespace

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        path = KINDS[body["kind"]].path(self.namespace) if body["kind"] in KINDS else _path(body, self.namespace)
        return self.rest.call("POST", path, body=body)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.rest.call("GET", KINDS[kind].path(self.namespace, name))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def items(self, kind: str, selector: str = "") -> list[dict[str, Any]]:
        query = [("labelSelector", selector)] if selector else []
        return self.rest.call("GET", KINDS[kind].path(self.namespace), query=query).get("items") or []

    def patch_spec(self, name: str, **spec: Any) -> None:
        self.rest.call("PATCH", KINDS["FineTuneJob"].path(self.namespace, name), {"spec": spec}, content_type=MERGE)

    def status(self, name: str) -> dict[str, Any]:
        return (self.get("FineTuneJob", name) or {}).get("status") or {}

    def wait(self, check: Any, what: str, timeout: float = 600, every: float = 2) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = check()
            if result:
                return result
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

    def phase(self, name: str, *phases: str, timeout: float = 600) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status(name)
            if status.get("phase") == "Failed" and "Failed" not in phases:
                conditions = {c["type"]: c for c in status.get("conditions") or []}
                failed = conditions.get("Failed", {})
                raise AssertionError(f"{name} failed: {failed.get('reason')}: {failed.get('message')}")
            return status if status.get("phase") in phases else None

        result: dict[str, Any] = self.wait(reached, f"{name} to reach {'/'.join(phases)}", timeout)
        return result


def _path(body: dict[str, Any], namespace: str) -> str:
    plural = {"PersistentVolumeClaim": "persistentvolumeclaims", "Namespace": "namespaces"}[body["kind"]]
    if body["kind"] == "Namespace":
        return "/api/v1/namespaces"
    return f"/api/v1/namespaces/{namespace}/{plural}"


@pytest.fixture(scope="session")
def rest() -> Rest:
    try:
        from kubernetes import config
        from kubernetes.client import ApiClient
    except ImportError as error:
        pytest.skip(f"the operator extra is not installed: {error}")
    try:
        config.load_kube_config()
        client = ApiClient()
        found = Rest(client).call("GET", "/apis/kubetune.io/v1alpha1")
    except Exception as error:  # no kubeconfig, unreachable server, no CRD: all mean "no cluster to test"
        pytest.skip(
            f"no reachable cluster with kubetune deployed ({type(error).__name__}: {error}); "
            "run `make kind-up images kind-load deploy` first"
        )
    if not any(r.get("name") == "finetunejobs" for r in found.get("resources") or []):
        pytest.skip("the cluster has no FineTuneJob CRD; run `make deploy`")
    return Rest(client)


@pytest.fixture(scope="module")
def cluster(rest: Rest) -> Iterator[Cluster]:
    namespace = f"kubetune-e2e-{uuid.uuid4().hex[:6]}"
    rest.call(
        "POST", "/api/v1/namespaces", body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
    )
    here = Cluster(rest, namespace)
    try:
        _prepare(here)
        yield here
    finally:
        rest.call("DELETE", f"/api/v1/namespaces/{namespace}")


def _prepare(cluster: Cluster) -> None:
    """Claims for the model and the results, the quickstart's facts, and a tiny model made
    by the trainer image in the models claim."""
    for claim in ("models", "results"):
        cluster.create(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            }
        )
    quickstart = (REPO / "examples" / "quickstart.yaml").read_text()
    facts = next(d for d in yaml.safe_load_all(quickstart) if d["kind"] == "ConfigMap")
    cluster.create(facts)
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "corpus"},
            "data": {"quickstart.yaml": quickstart},
        }
    )
    cluster.create(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "make-tiny-model"},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "nodeSelector": {"kubetune.io/trainer": "true"},
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 1000,
                            "fsGroup": 1000,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [
                            {
                                "name": "make",
                                "image": TRAINER_IMAGE,
                                "command": [
                                    "kubetune",
                                    "make-tiny-model",
                                    "/models/tiny-phi3",
                                    "--corpus",
                                    "/corpus/quickstart.yaml",
                                ],
                                "env": [{"name": "HOME", "value": "/tmp"}],
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "volumeMounts": [
                                    {"name": "models", "mountPath": "/models"},
                                    {"name": "corpus", "mountPath": "/corpus"},
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "models", "persistentVolumeClaim": {"claimName": "models"}},
                            {"name": "corpus", "configMap": {"name": "corpus"}},
                        ],
                    },
                },
            },
        }
    )

    def made() -> bool:
        job = cluster.get("Job", "make-tiny-model") or {}
        conditions = {c["type"]: c["status"] for c in (job.get("status") or {}).get("conditions") or []}
        if conditions.get("Failed") == "True":
            raise AssertionError("making the tiny model failed; see the make-tiny-model Job's pod log")
        return conditions.get("Complete") == "True"

    cluster.wait(made, "the tiny model", timeout=600)
