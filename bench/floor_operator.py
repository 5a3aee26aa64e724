"""The floor of the operator benchmark: the least a Kopf operator can do for a FineTuneJob,
one handler that creates one Job, with the same HTTP client and Kopf settings as kubetune's.
`python -m kopf run --standalone bench/floor_operator.py`."""

from __future__ import annotations

from typing import Any

import kopf
from kubernetes import config
from kubernetes.client import Configuration

from kubetune.controller.cluster import KINDS, AsyncRest

REST: list[AsyncRest] = []


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.last-handled-configuration")
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.posting.enabled = False
    configuration = Configuration()
    config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    rest = AsyncRest(configuration)
    rest.user_agent = "kubetune-operator/floor"
    REST.append(rest)


@kopf.on.create("kubetune.io", "v1alpha1", "finetunejobs")
async def create_job(name: str, namespace: str, **_: Any) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "trainer", "image": "busybox"}]}}
        },
    }
    await REST[0].call("POST", KINDS["Job"].path(namespace), body=job)
