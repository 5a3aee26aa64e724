"""The pod's environment is one model (kubetune.contract.PodEnvironment): what the builders
put in a pod, the trainer reads back unchanged, and `kubetune run --nproc` tells the
processes it starts everything a pod is told."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import parse_finetunejob
from kubetune.contract import VARIABLES, Launch, PodEnvironment
from kubetune.controller.builders import Context, build_preflight_job, build_training_job
from kubetune.controller.settings import Settings
from kubetune_trainer.errors import InvalidSpec
from kubetune_trainer.launch import torchrun_command
from kubetune_trainer.local import LocalPlan
from kubetune_trainer.runtime import Runtime

NETWORKS = "10.20.0.0/16,fd00:1234::/48"
LAUNCH = {info.alias for info in Launch.model_fields.values()}


def _context(job: dict[str, Any]) -> Context:
    job["metadata"]["namespace"] = "team-a"
    job["spec"]["resources"] = {"nodes": 3, "accelerators": 8}
    job["spec"]["output"] = {"s3": {"uri": "s3://models/demo"}}
    settings = Settings.from_env({"KUBETUNE_DATASET_ALLOWED_NETWORKS": NETWORKS, "KUBETUNE_MODEL_CACHE_PVC": "models"})
    return Context(parse_finetunejob(job), settings)


def _container(built: dict[str, Any]) -> dict[str, Any]:
    return built["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def _env(built: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in _container(built)["env"]}


def _mounted(built: dict[str, Any], path: Path) -> bool:
    return any(path.is_relative_to(m["mountPath"]) for m in _container(built)["volumeMounts"])


def test_a_training_pods_environment_reads_back_as_the_builders_wrote_it(job: dict[str, Any]) -> None:
    built = build_training_job(_context(job), attempt=2)
    env = _env(built)

    environment = PodEnvironment.read(env)
    runtime = Runtime.from_env(env | {"RANK": "0", "WORLD_SIZE": "24"})

    assert environment.variables() == {name: value for name, value in env.items() if name in VARIABLES}
    assert (runtime.job_name, runtime.namespace, runtime.world_size) == ("demo", "team-a", 24)
    assert runtime.model_cache == Path("/mnt/kubetune/model-cache")
    assert runtime.allowed_networks == tuple(ipaddress.ip_network(n) for n in NETWORKS.split(","))
    for path in (runtime.spec, runtime.work, runtime.model_cache):
        assert _mounted(built, path), path
    assert environment.launch == Launch(nodes=3, procs_per_node=8, master_addr="demo-a2-0.demo", master_port=29500)
    assert "--master-addr=demo-a2-0.demo" in torchrun_command(environment.launch, "1")


def test_a_preflight_pod_is_told_the_same_but_how_to_launch(job: dict[str, Any]) -> None:
    context = _context(job)
    training = PodEnvironment.read(_env(build_training_job(context, attempt=1)))

    preflight = PodEnvironment.read(_env(build_preflight_job(context)))

    assert preflight.launch is None
    assert preflight == training.model_copy(update={"launch": None})


def test_kubetune_run_with_nproc_tells_each_process_everything_a_pod_is_told(
    job: dict[str, Any], tmp_path: Path
) -> None:
    pod_variables = set(_env(build_training_job(_context(job), attempt=1))) & VARIABLES
    job["metadata"]["namespace"] = "team-a"
    plan = LocalPlan(
        parse_finetunejob(job),
        tmp_path / "volumes",
        tmp_path / "work",
        tmp_path / "secrets",
        None,
        2,
        {},
        (ipaddress.ip_network("10.20.0.0/16"),),
        tmp_path / "models",
    )
    inherited = {"PATH": "/usr/bin", "KUBETUNE_OUTPUT": "/stale", "KUBETUNE_NAMESPACE": "elsewhere"}

    env = plan.process_environment(inherited)

    assert pod_variables - LAUNCH <= set(env)  # torchrun --standalone does the launch
    assert env["PATH"] == "/usr/bin" and "KUBETUNE_OUTPUT" not in env
    in_process = plan.runtime()
    assert (in_process.namespace, in_process.model_cache) == ("team-a", tmp_path / "models")
    assert Runtime.from_env(env) == Runtime.of(plan.environment().model_copy(update={"outcome_shown_by_caller": True}))
    assert Runtime.from_env(env).outcome_shown_by_caller and not in_process.outcome_shown_by_caller


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("KUBETUNE_DATASET_ALLOWED_NETWORKS", "mirror", "'mirror' is not a network"),
        ("KUBETUNE_PROGRESS_PORT", "ninety", "valid integer"),
        ("KUBETUNE_NODES", "0", "greater than or equal to 1"),
    ],
)
def test_a_variable_that_does_not_parse_is_refused_by_name(name: str, value: str, said: str) -> None:
    with pytest.raises(InvalidSpec, match=rf"^{name}: .*{said}"):
        Runtime.from_env({name: value})


def test_an_empty_optional_variable_is_unset() -> None:
    environment = PodEnvironment.read({"KUBETUNE_MODEL_CACHE": "", "KUBETUNE_OUTPUT": ""})

    assert environment.model_cache is None and environment.output is None
    assert PodEnvironment.read({}) == PodEnvironment()
