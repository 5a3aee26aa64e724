"""The container kubelet's translation of a pod into `podman run` arguments, and its Job
controller's reading of a pod failure policy: without podman, in the default run, so a
change to the pods the operator renders that the kubelet would run differently shows here."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api import parse_finetunejob
from kubetune.controller.builders import Context, build_config_map, build_training_job
from kubetune.controller.cluster import Rest
from kubetune.controller.settings import Settings
from tests.containers.kubelet import Node, failure_policy_matches, quantity_bytes
from tests.integration.conftest import REPO
from tests.integration.emulator import StrictKubernetesEmulator

QUICKSTART = REPO / "examples" / "quickstart.yaml"


@pytest.fixture
def rendered() -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """The quickstart's training Job as the operator renders it, and the ConfigMaps its pods mount."""
    config_map, job = yaml.safe_load_all(QUICKSTART.read_text())
    job["metadata"]["namespace"] = "default"
    context = Context(parse_finetunejob(job), Settings(trainer_cpu_image="trainer:test"))
    return job, build_training_job(context, attempt=1), [config_map, build_config_map(context)]


def node_with(config_maps: list[dict[str, Any]], tmp_path: Path) -> Node:
    emulator = StrictKubernetesEmulator()
    emulator.create_object("", "v1", "namespaces", {"metadata": {"name": "default"}})
    for config_map in config_maps:
        emulator.create_object("", "v1", "configmaps", copy.deepcopy(config_map), namespace="default")
    claims = tmp_path / "claims"
    for claim in ("models", "results"):
        (claims / claim).mkdir(parents=True)
    return Node(emulator, Rest(None), "default", claims=claims, root=tmp_path / "pods")  # type: ignore[arg-type]


def pod_of(job: dict[str, Any], index: int, uid: str = "u") -> dict[str, Any]:
    name = job["metadata"]["name"]
    spec = copy.deepcopy(job["spec"]["template"]["spec"])
    spec["hostname"] = f"{name}-{index}"
    return {"metadata": {"name": f"{name}-{index}-x", "uid": uid, "annotations": {}}, "spec": spec}


def options(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == flag]


@pytest.mark.asyncio
async def test_a_rendered_training_pod_runs_as_the_pod_says(rendered: Any, tmp_path: Path) -> None:
    _, job, config_maps = rendered
    node = node_with(config_maps, tmp_path)
    pods = [pod_of(job, 0), pod_of(job, 1)]
    for pod in pods:
        node.addresses[pod["metadata"]["name"]] = node.next_address()
    folder = tmp_path / "pods" / "rank0"
    folder.mkdir(parents=True)

    args = await node.run_arguments(pods[0], pods[0]["spec"]["containers"][0], folder, "127.0.0.10", pods)

    assert args[-1] == "trainer:test"
    assert options(args, "--user") == ["1000:1000"]
    assert options(args, "--group-add") == ["1000"]
    assert {"--read-only", "--read-only-tmpfs=false", "--cap-drop=ALL"} <= set(args)
    assert options(args, "--security-opt") == ["no-new-privileges"]
    assert options(args, "--network") == ["host"]
    assert options(args, "--entrypoint") == ['["python", "-m", "kubetune_trainer.launch"]']
    volumes = {v.split(":")[1]: v for v in options(args, "--volume")}
    assert volumes["/mnt/kubetune/volumes/models"].startswith(f"{tmp_path}/claims/models:")
    assert volumes["/etc/kubetune"].endswith(":ro")  # the spec ConfigMap, read-only
    assert volumes["/dev/termination-log"] == f"{folder}/termination-log:/dev/termination-log:rw"
    shm = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "dshm")
    assert options(args, "--shm-size") == [str(quantity_bytes(shm["emptyDir"]["sizeLimit"]))]
    # Rank 0's name under the headless Service, and rank 1's, on loopback addresses only.
    hosts = dict(entry.split(":") for entry in options(args, "--add-host"))
    assert hosts["quickstart-a1-0.quickstart"] == "127.0.0.10"
    assert hosts["quickstart-a1-1.quickstart"] == "127.0.0.11"
    assert all(address.startswith("127.0.0.") for address in hosts.values())
    environment = dict(entry.split("=", 1) for entry in options(args, "--env"))
    assert environment["KUBETUNE_MASTER_ADDR"] == "quickstart-a1-0.quickstart"
    spec_file = folder / "volumes" / "spec" / "spec.json"
    assert spec_file.is_file()


@pytest.mark.asyncio
async def test_a_pod_that_must_not_run_as_root_is_refused(rendered: Any, tmp_path: Path) -> None:
    _, job, config_maps = rendered
    node = node_with(config_maps, tmp_path)
    pod = pod_of(job, 0)
    pod["spec"]["securityContext"]["runAsUser"] = 0

    with pytest.raises(ValueError, match="runAsNonRoot"):
        await node.security_arguments(pod["spec"], pod["spec"]["containers"][0])


@pytest.mark.parametrize(
    ("conditions", "code", "matches"),
    [
        ([{"type": "DisruptionTarget", "status": "True"}], 44, True),
        ([], 42, True),
        ([], 1, False),
        ([], 44, False),
    ],
)
def test_the_job_controller_reads_the_pod_failure_policy(
    rendered: Any, conditions: list[Any], code: int, matches: bool
) -> None:
    _, job, _ = rendered
    pod = {
        "status": {
            "conditions": conditions,
            "containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": code}}}],
        }
    }

    assert failure_policy_matches(job, pod) is matches


@pytest.mark.parametrize(("text", "size"), [("64Mi", 64 * 2**20), ("1Gi", 2**30), ("2G", 2 * 10**9), ("512", 512)])
def test_memory_quantities(text: str, size: int) -> None:
    assert quantity_bytes(text) == size
