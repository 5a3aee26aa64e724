"""The deployed path, run as real containers: the operator in its image against the emulated
API server, and every pod it creates in the trainer image, with the pod's own environment,
mounts and security context."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api import parse_finetunejob
from kubetune.contract import RunSummary
from kubetune.controller.builders import Context, build_config_map, build_training_job
from kubetune.controller.settings import Settings
from tests.containers.conftest import REPO, Deployment, Images

pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.asyncio, pytest.mark.timeout(1800)]

QUICKSTART = REPO / "examples" / "quickstart.yaml"
PREFERENCE = REPO / "examples" / "preference-dpo.yaml"
TRAINING_TIMEOUT = 900.0
"""Preflight and 80 CPU steps of the tiny model, on a loaded two-core machine."""


def quickstart(**dataset: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The quickstart's ConfigMap and FineTuneJob, with the preflight on."""
    config_map, job = yaml.safe_load_all(QUICKSTART.read_text())
    job = copy.deepcopy(job)
    job["spec"]["dataset"].update({"preflight": True, **dataset})
    return config_map, job


async def make_tiny_model(deployment: Deployment, tiny_model: Path) -> None:
    """The quickstart's tiny model on the models claim, owned by the user that made it (the
    pods' user: safetensors writes its weights readable by their owner alone)."""
    subprocess.run(["cp", "-a", str(tiny_model), str(deployment.claim("models") / "tiny-phi3")], check=True)


def phase(deployment: Deployment, name: str) -> str | None:
    phase = deployment.status(name).get("phase")
    return phase if phase in ("Succeeded", "Failed") else None


def owners(folder: Path) -> set[tuple[int, int]]:
    return {(p.stat().st_uid, p.stat().st_gid) for p in folder.rglob("*")}


async def test_the_quickstart_trains_to_succeeded_in_containers(
    deployment: Deployment, tiny_model: Path, operator_container: str
) -> None:
    await make_tiny_model(deployment, tiny_model)
    results = deployment.claim("results")
    config_map, job = quickstart()

    await deployment.create(config_map)
    await deployment.create(job)
    finished = await deployment.until(lambda: phase(deployment, "quickstart"), "the job to finish", TRAINING_TIMEOUT)

    status = deployment.status("quickstart")
    assert finished == "Succeeded", (status, deployment.reasons("quickstart"))
    assert set(deployment.jobs()) == {"quickstart-preflight", "quickstart-a1"}
    assert status["output"]["location"] == "pvc://results/quickstart"
    assert set(status["output"]["formats"]) == {"adapter", "merged"}
    assert status["progress"]["step"] == 80
    assert status["progress"]["loss"] > 0
    assert status["attempts"] == 1
    outputs = results / "quickstart"
    assert (outputs / "adapter" / "adapter_config.json").is_file(), sorted(p.name for p in outputs.iterdir())
    assert owners(outputs) == {(1000, 1000)}
    # The summary travelled in rank 0's termination message, as the kubelet keeps it.
    rank0 = [p for p in deployment.node.pods.values() if p.name.startswith("quickstart-a1-0-")]
    message = RunSummary.model_validate_json(rank0[0].termination_file.read_text())  # strictly: no part dropped
    assert message.status == "Succeeded"


async def test_the_dpo_example_learns_its_preference_in_containers(
    deployment: Deployment, tiny_model: Path, operator_container: str
) -> None:
    """The example as written, but for its preflight (on, as on a cluster by default): the
    preflight checks the pairs in the trainer image, and the status carries the reward
    figures the preference run measured."""
    await make_tiny_model(deployment, tiny_model)
    results = deployment.claim("results")
    config_map, job = yaml.safe_load_all(PREFERENCE.read_text())
    job["spec"]["dataset"]["preflight"] = True

    await deployment.create(config_map)
    await deployment.create(job)
    finished = await deployment.until(
        lambda: phase(deployment, "preference-dpo"), "the job to finish", TRAINING_TIMEOUT
    )

    status = deployment.status("preference-dpo")
    assert finished == "Succeeded", (status, deployment.reasons("preference-dpo"))
    assert set(deployment.jobs()) == {"preference-dpo-preflight", "preference-dpo-a1"}
    assert status["output"]["location"] == "pvc://results/preference-dpo"
    assert status["progress"]["step"] == 20
    assert status["progress"]["evalRewardAccuracy"] > 0.9, status["progress"]
    assert status["metrics"]["evalRewardAccuracy"] > 0.9, status["metrics"]
    assert (results / "preference-dpo" / "adapter" / "adapter_config.json").is_file()


async def test_a_dataset_defect_on_line_7_fails_the_preflight_and_nothing_trains(
    deployment: Deployment, tiny_model: Path, operator_container: str
) -> None:
    await make_tiny_model(deployment, tiny_model)
    results = deployment.claim("results")
    config_map, job = quickstart()
    lines = config_map["data"]["facts.jsonl"].splitlines()
    lines[6] = lines[6][: len(lines[6]) // 2]  # line 7 cut in half: not JSON
    config_map["data"]["facts.jsonl"] = "\n".join(lines) + "\n"

    await deployment.create(config_map)
    await deployment.create(job)
    finished = await deployment.until(lambda: phase(deployment, "quickstart"), "the job to fail", TRAINING_TIMEOUT)

    status = deployment.status("quickstart")
    failed = [c for c in status["conditions"] if c["type"] == "Failed" and c["status"] == "True"]
    assert finished == "Failed", status
    assert failed[0]["reason"] == "DatasetInvalid", failed
    assert "facts.jsonl line 7" in failed[0]["message"], failed
    assert deployment.jobs() == ["quickstart-preflight"]
    assert not any(results.iterdir())


def training_pod(images: Images, script: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The quickstart's training pod as the operator renders it (image, mounts, security
    context), running `script` instead of the trainer; and the ConfigMaps it mounts."""
    config_map, job = quickstart()
    job["metadata"]["namespace"] = "default"
    context = Context(parse_finetunejob(job), Settings(trainer_cpu_image=images.trainer))
    template = build_training_job(context, attempt=1)["spec"]["template"]
    template["spec"]["containers"][0]["command"] = ["python", "-c", script]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "writer"}, "spec": template["spec"]}
    return [config_map, build_config_map(context)], pod


WRITE = "import sys; open(sys.argv[1], 'w').write('x'); print('wrote', sys.argv[1])"


@pytest.mark.parametrize(
    ("path", "succeeds"),
    [
        ("/mnt/kubetune/work/inside", True),
        ("/tmp/inside", True),
        ("/opt/kubetune/outside", False),
        ("/home/kubetune/outside", False),
    ],
)
async def test_a_pod_that_writes_outside_its_mounts_fails(
    deployment: Deployment, tiny_model: Path, images: Images, path: str, succeeds: bool
) -> None:
    deployment.claim("models")
    deployment.claim("results")
    config_maps, pod = training_pod(images, WRITE)
    pod["spec"]["containers"][0]["command"] += [path]
    for config_map in config_maps:
        await deployment.create(config_map)

    await deployment.create(pod)
    ended = await deployment.until(
        lambda: (
            (deployment.get("", "v1", "pods", "writer") or {}).get("status", {}).get("phase") in ("Succeeded", "Failed")
        ),
        "the pod to end",
        120,
    )

    status = deployment.get("", "v1", "pods", "writer")["status"]  # type: ignore[index]
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert ended
    if succeeds:
        assert (status["phase"], terminated["exitCode"]) == ("Succeeded", 0), terminated
    else:
        assert status["phase"] == "Failed", terminated
        # FallbackToLogsOnError: the message file is empty, so the log's tail is the message.
        assert "Read-only file system" in terminated["message"], terminated


def two_nodes(max_steps: int, interval: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The quickstart as DDP LoRA on two CPU nodes (one process each)."""
    config_map, job = quickstart()
    job["spec"]["resources"].update({"nodes": 2, "cpu": "1", "memory": "2Gi"})
    job["spec"]["distributed"] = {"strategy": "ddp"}
    job["spec"]["training"].update({"maxSteps": max_steps, "perDeviceBatchSize": 4})
    job["spec"]["checkpoint"] = {"intervalSteps": interval}
    # Every node writes its share of a checkpoint to the claim: one folder on this machine.
    job["spec"]["output"]["pvc"]["readWriteMany"] = True
    return config_map, job


def complete_checkpoints(results: Path) -> dict[int, set[str]]:
    folder = results / "quickstart" / "checkpoints"
    return {
        int(path.name.split("-")[1]): {p.name for p in path.iterdir()}
        for path in folder.glob("checkpoint-*")
        if (path / "COMPLETE").is_file()
    }


def pods_of(deployment: Deployment, job: str) -> list[Any]:
    return sorted((p for p in deployment.node.pods.values() if p.name.startswith(f"{job}-")), key=lambda p: p.name)


async def test_two_nodes_train_ddp_lora_through_static_rendezvous(
    deployment: Deployment, tiny_model: Path, operator_container: str
) -> None:
    await make_tiny_model(deployment, tiny_model)
    results = deployment.claim("results")
    config_map, job = two_nodes(max_steps=20, interval=20)

    await deployment.create(config_map)
    await deployment.create(job)
    finished = await deployment.until(lambda: phase(deployment, "quickstart"), "the job to finish", TRAINING_TIMEOUT)

    status = deployment.status("quickstart")
    assert finished == "Succeeded", (status, deployment.reasons("quickstart"))
    ranks = pods_of(deployment, "quickstart-a1")
    assert [p.name.rsplit("-", 1)[0] for p in ranks] == ["quickstart-a1-0", "quickstart-a1-1"]
    assert [rank.exit_code for rank in ranks] == [0, 0]
    # Rank 1 met rank 0 by its name under the headless Service, on rank 0's loopback address.
    assert "--master-addr=quickstart-a1-0.quickstart" in await deployment.node.logs(ranks[1].name)
    checkpoints = complete_checkpoints(results)
    assert list(checkpoints) == [20], checkpoints
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= checkpoints[20], checkpoints
    assert status["progress"]["step"] == 20


async def test_an_evicted_rank_stops_every_rank_at_one_checkpoint_and_the_next_attempt_resumes(
    deployment: Deployment, tiny_model: Path, operator_container: str
) -> None:
    await make_tiny_model(deployment, tiny_model)
    results = deployment.claim("results")
    config_map, job = two_nodes(max_steps=60, interval=1000)
    await deployment.create(config_map)
    await deployment.create(job)
    await deployment.until(
        lambda: (deployment.status("quickstart").get("progress") or {}).get("step", 0) >= 5,
        "training to pass step 5",
        TRAINING_TIMEOUT,
    )

    rank1 = pods_of(deployment, "quickstart-a1")[1]
    await deployment.node.evict(rank1.name)
    finished = await deployment.until(lambda: phase(deployment, "quickstart"), "the job to finish", TRAINING_TIMEOUT)

    status = deployment.status("quickstart")
    assert finished == "Succeeded", (status, deployment.reasons("quickstart"))
    assert (status["attempts"], status["preemptions"]) == (1, 1), status
    checkpoints = complete_checkpoints(results)
    step = min(checkpoints)  # the one written on SIGTERM; attempt 2 writes the later ones
    assert 5 <= step < 60, checkpoints
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= checkpoints[step]
    # Both ranks stopped at that step, rank 0 by agreement with the rank that got SIGTERM.
    for rank in pods_of(deployment, "quickstart-a1"):
        assert f"Interrupted: stopped by a signal at step {step}" in await deployment.node.logs(rank.name), rank.name
    resumed = await deployment.node.logs(pods_of(deployment, "quickstart-a2")[0].name)
    assert f"resuming from /mnt/kubetune/volumes/results/quickstart/checkpoints/checkpoint-{step}" in resumed
    assert status["progress"]["step"] == 60


async def test_a_training_pod_exits_with_the_trainers_exit_code(deployment: Deployment, images: Images) -> None:
    """A training pod whose model is missing: the trainer exits 41 (InvalidSpec, not retried)."""
    deployment.claim("models")  # empty: no tiny-phi3 on it
    deployment.claim("results")
    config_maps, pod = training_pod(images, "")
    pod["spec"]["containers"][0]["command"] = ["python", "-m", "kubetune_trainer.launch"]
    pod["metadata"]["annotations"] = {"batch.kubernetes.io/job-completion-index": "0"}
    pod["spec"]["hostname"] = "quickstart-a1-0"
    for config_map in config_maps:
        await deployment.create(config_map)

    await deployment.create(pod)
    await deployment.until(
        lambda: deployment.node.pods.get("writer") and deployment.node.pods["writer"].done, "the pod to end", 300
    )

    logs = await deployment.node.logs("writer")
    assert "InvalidSpec" in logs, logs[-2000:]
    assert deployment.node.pods["writer"].exit_code == 41
