"""The floor of the operator benchmark: the least a Kopf operator can do for a FineTuneJob,
one handler that creates one Job, with the same HTTP client and Kopf settings as kubetune's.
`python -m kopf run --standalone bench/floor_operator.py`."""

from __future__ import annotations

from typing import Any

import kopf
from kubernetes import config
from kubernetes.client import ApiClient

from kubetune.controller.cluster import KINDS, Rest

REST: list[Rest] = []


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.last-handled-configuration")
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.posting.enabled = False
    config.load_kube_config()  # type: ignore[no-untyped-call]
    client = ApiClient()
    client.user_agent = "kubetune-operator/floor"
    REST.append(Rest(client))


@kopf.on.create("kubetune.io", "v1alpha1", "finetunejobs")
def create_job(name: str, namespace: str, **_: Any) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "trainer", "image": "busybox"}]}}
        },
    }
    REST[0].call("POST", KINDS["Job"].path(namespace), body=job)
