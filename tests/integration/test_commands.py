"""The cluster commands against the emulated API server, with the operator running."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from kubetune.cli import cli
from kubetune.contract import RunSummary
from kubetune.controller.cluster import KINDS

from .actors import SUCCESS, Cluster, Operator, eventually
from .conftest import ApiServer

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


async def kubetune(*args: str) -> Result:
    """The command as a person types it; blocking HTTP, so off the emulator's event loop."""
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args))


def _file(tmp_path: Path, *documents: dict[str, Any]) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    return str(path)


async def test_submit_list_status_watch_and_delete(
    operator: Operator, cluster: Cluster, apiserver: ApiServer, job: dict[str, Any], tmp_path: Path
) -> None:
    job["spec"]["dataset"] = {
        "configMap": {"name": "facts", "key": "facts.jsonl"},
        "format": "chat",
        "preflight": False,
    }
    facts = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "facts"}, "data": {"facts.jsonl": "{}"}}
    path = _file(tmp_path, facts, job)

    submitted = await kubetune("submit", path)
    again = await kubetune("submit", path)

    assert submitted.exit_code == 0, submitted.output
    assert submitted.output.splitlines() == ["configmap/facts created", "finetunejob/demo created"]
    assert again.output.splitlines() == ["configmap/facts unchanged", "finetunejob/demo unchanged"]
    await eventually(lambda: "demo-a1" in cluster.jobs(), "attempt 1")
    await cluster.start_pods("demo-a1")
    await eventually(lambda: cluster.status().get("phase") == "Running", "phase Running")

    listed = await kubetune("list")
    assert listed.output.splitlines()[1].split()[:3] == ["demo", "Running", "lora"]

    watching = asyncio.create_task(kubetune("watch", "demo", "--interval", "0.1"))
    await cluster.finish("demo-a1", 0, SUCCESS)
    watched = await asyncio.wait_for(watching, timeout=30)
    assert watched.exit_code == 0, watched.output
    assert "succeeded; output at pvc://results/demo" in watched.output

    status = await kubetune("status", "demo")
    assert "Phase:     Succeeded" in status.output
    assert "Completed" in status.output and "Events:" in status.output

    deleted = await kubetune("delete", "demo")
    assert deleted.output.strip() == "finetunejob/demo deleted"
    await eventually(lambda: not cluster.jobs(), "the Jobs collected")


async def test_suspend_resume_and_a_failing_watch(
    operator: Operator, cluster: Cluster, job: dict[str, Any], tmp_path: Path
) -> None:
    job["spec"]["dataset"]["preflight"] = False
    assert (await kubetune("submit", _file(tmp_path, job))).exit_code == 0
    await eventually(lambda: "demo-a1" in cluster.jobs(), "attempt 1")

    assert (await kubetune("suspend", "demo")).output.strip() == "finetunejob/demo suspended"
    await eventually(lambda: cluster.jobs()["demo-a1"]["spec"]["suspend"] is True, "the Job suspended")
    assert (await kubetune("resume", "demo")).output.strip() == "finetunejob/demo resumed"
    await eventually(lambda: cluster.jobs()["demo-a1"]["spec"]["suspend"] is False, "the Job resumed")

    await cluster.start_pods("demo-a1")
    watching = asyncio.create_task(kubetune("watch", "demo", "--interval", "0.1"))
    await cluster.finish("demo-a1", 42, RunSummary.failure("DatasetInvalid", "line 2: no text"))
    watched = await asyncio.wait_for(watching, timeout=30)

    assert watched.exit_code == 1
    assert "failed: DatasetInvalid: line 2: no text" in watched.output


async def test_commands_end_with_a_message_not_a_traceback(
    apiserver: ApiServer, job: dict[str, Any], tmp_path: Path
) -> None:
    missing = await kubetune("status", "nope")
    job["spec"]["method"] = {"type": "full", "lora": {"r": 4}}
    invalid = await kubetune("submit", _file(tmp_path, job))

    assert missing.exit_code == 1 and "finetunejob nope not found in namespace default" in missing.output
    assert invalid.exit_code == 1 and "method.lora" in invalid.output
    assert "Traceback" not in missing.output + invalid.output


async def test_logs_of_a_rank_of_the_newest_attempt(
    operator: Operator, cluster: Cluster, apiserver: ApiServer, job: dict[str, Any], tmp_path: Path
) -> None:
    job["spec"]["dataset"]["preflight"] = False
    job["spec"]["resources"] = {"nodes": 2}
    job["spec"]["output"]["pvc"]["readWriteMany"] = True
    assert (await kubetune("submit", _file(tmp_path, job))).exit_code == 0
    await eventually(lambda: "demo-a1" in cluster.jobs(), "attempt 1")
    rank0, rank1 = await cluster.start_pods("demo-a1")
    apiserver.emulator.pod_logs[("default", rank0)] = "step 1 loss 2.0\nstep 2 loss 1.5\n"
    apiserver.emulator.pod_logs[("default", rank1)] = "rank 1 waiting for rank 0\n"

    first = await kubetune("logs", "demo")
    second = await kubetune("logs", "demo", "--rank", "1")
    missing = await kubetune("logs", "demo", "--rank", "5")

    assert first.output == "step 1 loss 2.0\nstep 2 loss 1.5\n"
    assert second.output == "rank 1 waiting for rank 0\n"
    assert missing.exit_code == 1 and "no pod of rank 5 in attempt 1 of demo" in missing.output


async def test_list_all_namespaces_shows_each_job_s_namespace(
    cluster: Cluster, apiserver: ApiServer, job: dict[str, Any]
) -> None:
    apiserver.emulator.create_object("", "v1", "namespaces", {"metadata": {"name": "research"}})
    await cluster.submit(job)
    elsewhere = {**job, "metadata": {**job["metadata"], "name": "probe", "namespace": "research"}}
    await cluster.call("POST", KINDS["FineTuneJob"].path("research"), elsewhere)

    everywhere = await kubetune("list", "-A")
    here = await kubetune("list")
    both = await kubetune("list", "--all-namespaces", "-n", "research")

    assert everywhere.exit_code == 0, everywhere.output
    assert [line.split()[:2] for line in everywhere.output.splitlines()] == [
        ["NAMESPACE", "NAME"],
        ["default", "demo"],
        ["research", "probe"],
    ]
    assert [line.split()[0] for line in here.output.splitlines()] == ["NAME", "demo"]
    assert both.exit_code == 2 and "leave out -n/--namespace" in both.output


async def test_logs_of_a_failed_attempt_kept_after_the_retry_started(
    operator: Operator, cluster: Cluster, apiserver: ApiServer, job: dict[str, Any], tmp_path: Path
) -> None:
    job["spec"]["dataset"]["preflight"] = False
    assert (await kubetune("submit", _file(tmp_path, job))).exit_code == 0
    await eventually(lambda: "demo-a1" in cluster.jobs(), "attempt 1")
    (first,) = await cluster.start_pods("demo-a1")
    apiserver.emulator.pod_logs[("default", first)] = "step 7 loss nan\nTraceback: NaN loss\n"
    await cluster.finish("demo-a1", 1, RunSummary.failure("TrainingFailed", "NaN loss"))
    await eventually(lambda: "demo-a2" in cluster.jobs(), "attempt 2")

    failed = await kubetune("logs", "demo", "--attempt", "1")
    beyond = await kubetune("logs", "demo", "--attempt", "3")

    assert failed.exit_code == 0, failed.output
    assert failed.output == "step 7 loss nan\nTraceback: NaN loss\n"
    assert beyond.exit_code == 1 and "demo has no attempt 3 (attempts 1 to 2 were started)" in beyond.output
