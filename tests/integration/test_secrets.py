"""Secret values never leave their Secrets: a job that names a hub token, S3 keys and a
tracking key runs a whole lifecycle (and fails once, so failure messages and Events are
written too), then everything in the API server (ConfigMaps, Jobs, pod templates, the
FineTuneJob's status, Events), the operator's log and what the cluster commands print is
scanned for the planted values. The operator never even reads a Secret (see test_rbac)."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kubetune.cli import cli
from kubetune.contract import RunSummary

from .actors import NAMESPACE, Cluster, Operator, eventually
from .conftest import ApiServer

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "multinode-deepspeed-zero3.yaml"
PLANTED = {
    "hf-token": {"token": "hf_plantedTokenThatMustNeverLeak"},
    "s3-credentials": {"AWS_ACCESS_KEY_ID": "AKIAPLANTEDKEYID", "AWS_SECRET_ACCESS_KEY": "planted/secret+key=="},
    "wandb": {"WANDB_API_KEY": "planted-wandb-key-0123456789"},
}


def _leaks(text: str) -> list[str]:
    return [value for secret in PLANTED.values() for value in secret.values() if value in text]


async def test_no_secret_value_reaches_anything_the_operator_writes_or_prints(
    operator: Operator, cluster: Cluster, apiserver: ApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name, data in PLANTED.items():
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": encoded}
        await cluster.call("POST", f"/api/v1/namespaces/{NAMESPACE}/secrets", secret)
    job = copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))
    job["metadata"] = {"name": "demo", "namespace": NAMESPACE}
    job["spec"].pop("queueName")
    job["spec"]["dataset"]["preflight"] = False
    await cluster.submit(job)
    await eventually(lambda: "demo-a1" in cluster.jobs(), "attempt 1")
    await cluster.start_pods("demo-a1")
    failure = RunSummary.failure("TrainingFailed", "rank 3 lost its connection")
    await cluster.finish("demo-a1", 1, failure)
    await eventually(lambda: "demo-a2" in cluster.jobs(), "the retry")
    status = await asyncio.to_thread(CliRunner().invoke, cli, ["status", "demo"])

    everything = []
    for plural in ("configmaps", "services", "pods", "events", "finetunejobs"):
        group, version = ("kubetune.io", "v1alpha1") if plural == "finetunejobs" else ("", "v1")
        everything += apiserver.emulator.list_objects(group, version, plural, NAMESPACE)
    everything += apiserver.emulator.list_objects("batch", "v1", "jobs", NAMESPACE)
    written = json.dumps(everything)

    assert "hf-token" in written and "s3-credentials" in written, "the Secrets are referenced, by name"
    assert _leaks(written) == []
    assert _leaks(caplog.text) == []
    assert _leaks(status.output) == []
    pod = cluster.jobs()["demo-a2"]["spec"]["template"]["spec"]
    assert all("valueFrom" not in e for e in pod["containers"][0]["env"]), "Secrets are files, never variables"
