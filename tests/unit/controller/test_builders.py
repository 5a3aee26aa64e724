"""The children of a FineTuneJob, built without a cluster and checked against the
Kubernetes schemas (kubernetes-validate, strict) and against what the trainer needs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from kubetune.api import KIND, parse_finetunejob
from kubetune.contract import ExitCode
from kubetune.controller import names
from kubetune.controller.builders import (
    KUEUE_QUEUE_LABEL,
    Context,
    NotBuildable,
    build_children,
    build_config_map,
    build_preflight_job,
    build_service,
    build_training_job,
)
from kubetune.controller.settings import Settings
from kubetune.manifests import read_documents

EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "examples").glob("*.yaml"))
KUBERNETES_VERSIONS = ["1.33.0", "1.37.0"]


def _context(body: dict[str, Any], **settings: Any) -> Context:
    return Context(parse_finetunejob(body), Settings(**settings))


def _pod(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def _env(job: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in _pod(job)["containers"][0]["env"]}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_example_builds_children_that_kubernetes_accepts(path: Path, version: str) -> None:
    for document in read_documents(path):
        if document.body.get("kind") != KIND:
            continue
        for child in build_children(_context(document.body)):
            kubernetes_validate.validate(child, version, strict=True)


def test_training_job_is_an_all_or_nothing_indexed_job(job: dict[str, Any]) -> None:
    job["spec"]["resources"] = {"nodes": 3, "accelerators": 8, "sharedMemory": "32Gi"}
    job["spec"]["output"] = {"s3": {"uri": "s3://models/demo"}}
    job["spec"]["distributed"] = {"strategy": "deepspeed", "deepspeed": {"stage": 3}}

    built = build_training_job(_context(job), attempt=2)
    pod = _pod(built)
    trainer = pod["containers"][0]

    assert built["metadata"]["name"] == "demo-a2"
    assert built["spec"]["completionMode"] == "Indexed"
    assert built["spec"]["completions"] == built["spec"]["parallelism"] == 3
    assert built["spec"]["backoffLimit"] == 0
    assert pod["restartPolicy"] == "Never"
    assert pod["subdomain"] == names.service_name("demo") == "demo"
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert _env(built)["KUBETUNE_MASTER_ADDR"] == "demo-a2-0.demo"
    assert _env(built)["KUBETUNE_NODES"] == "3" and _env(built)["KUBETUNE_PROCS_PER_NODE"] == "8"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}} in pod["volumes"]
    assert trainer["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_failure_policy_separates_disruption_and_hopeless_failures(job: dict[str, Any]) -> None:
    rules = build_training_job(_context(job), 1)["spec"]["podFailurePolicy"]["rules"]

    assert rules[0]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    assert rules[1]["onExitCodes"]["values"] == [
        ExitCode.INVALID_SPEC,
        ExitCode.INVALID_DATA,
        ExitCode.OUT_OF_MEMORY,
        ExitCode.DISK_FULL,
    ]


def test_pods_are_locked_down(job: dict[str, Any]) -> None:
    pod = _pod(build_training_job(_context(job), 1))
    container = pod["containers"][0]

    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_secrets_are_files_and_never_environment(job: dict[str, Any]) -> None:
    job["spec"]["model"] = {"preset": "llama-3.1-8b-instruct", "hubTokenSecret": {"name": "hf", "key": "token"}}
    job["spec"]["output"] = {"s3": {"uri": "s3://bucket/p", "credentialsSecret": {"name": "s3"}}}

    built = build_training_job(_context(job), 1)
    pod = _pod(built)
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}

    assert {"/var/run/secrets/kubetune/hf", "/var/run/secrets/kubetune/s3"} <= mounts
    assert not any("valueFrom" in e for e in pod["containers"][0]["env"])
    assert "envFrom" not in pod["containers"][0]


def test_claims_and_configmaps_are_mounted_where_the_trainer_looks(job: dict[str, Any]) -> None:
    job["spec"]["model"] = {"pvc": {"claimName": "models", "path": "phi3"}}
    job["spec"]["dataset"] = {"configMap": {"name": "data", "key": "train.jsonl"}}

    mounts = {m["mountPath"]: m for m in _pod(build_training_job(_context(job), 1))["containers"][0]["volumeMounts"]}

    assert "/mnt/kubetune/volumes/models" in mounts
    assert "/mnt/kubetune/volumes/results" in mounts
    assert mounts["/mnt/kubetune/configmaps/data"]["readOnly"] is True


def test_cpu_only_job_asks_for_no_accelerator_and_uses_the_cpu_image(job: dict[str, Any]) -> None:
    job["spec"]["resources"] = {"accelerators": 0, "cpu": "4", "memory": "8Gi"}

    container = _pod(build_training_job(_context(job), 1))["containers"][0]

    assert container["resources"]["limits"] == {"cpu": "4", "memory": "8Gi"}
    assert container["image"].endswith("-cpu")


def test_kueue_jobs_are_created_suspended_with_the_queue_label(job: dict[str, Any]) -> None:
    job["spec"]["queueName"] = "team-a"
    context = _context(job)

    for built in (build_training_job(context, 1), build_preflight_job(context)):
        assert built["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a"
        assert built["spec"]["suspend"] is True


def test_suspended_job_is_created_suspended(job: dict[str, Any]) -> None:
    job["spec"]["suspend"] = True

    assert build_training_job(_context(job), 1)["spec"]["suspend"] is True


def test_preflight_runs_on_a_cpu_with_the_data_but_no_accelerator(job: dict[str, Any]) -> None:
    built = build_preflight_job(_context(job))
    container = _pod(built)["containers"][0]

    assert container["command"][-1] == "kubetune_trainer.preflight"
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert container["image"].endswith("-cpu")
    assert "completionMode" not in built["spec"]


def test_preflight_is_left_out_when_the_spec_turns_it_off(job: dict[str, Any]) -> None:
    job["spec"]["dataset"]["preflight"] = False

    kinds = [(c["kind"], c["metadata"]["name"]) for c in build_children(_context(job))]

    assert kinds == [("ConfigMap", "demo-spec"), ("Service", "demo"), ("Job", "demo-a1")]


def test_service_is_headless_and_publishes_pods_before_they_are_ready(job: dict[str, Any]) -> None:
    service = build_service(_context(job))

    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True


def test_config_map_holds_the_spec_the_trainer_reads(job: dict[str, Any]) -> None:
    from kubetune.api import FineTuneJobSpec

    data = build_config_map(_context(job))["data"]["spec.json"]

    assert FineTuneJobSpec.model_validate_json(data) == parse_finetunejob(job).spec


def test_children_are_owned_by_the_finetunejob_when_it_has_a_uid(job: dict[str, Any]) -> None:
    job["metadata"]["uid"] = "0a1b2c"

    for child in build_children(_context(job)):
        owner = child["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("FineTuneJob", "0a1b2c", True)


def test_long_names_fit_every_limit(job: dict[str, Any]) -> None:
    job["metadata"]["name"] = "9" + "x" * 120
    context = _context(job)

    training = build_training_job(context, 12)
    service = build_service(context)

    assert len(training["metadata"]["name"]) <= names.JOB_NAME_LIMIT
    assert len(f"{training['metadata']['name']}-9999") <= 63
    assert service["metadata"]["name"][0].isalpha() and len(service["metadata"]["name"]) <= 63
    assert names.attempt_job_name(context.name, 12) != names.attempt_job_name(context.name[:-1] + "y", 12)
    assert len(training["metadata"]["labels"]["kubetune.io/finetunejob"]) <= 63
    kubernetes_validate.validate(training, KUBERNETES_VERSIONS[-1], strict=True)
    kubernetes_validate.validate(service, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_installations_model_cache_is_shared_by_every_pod(job: dict[str, Any]) -> None:
    training = build_training_job(_context(job, model_cache_claim="model-cache"), 1)

    pod = _pod(training)
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "model-cache"}} in pod["volumes"]
    assert _env(training)["KUBETUNE_MODEL_CACHE"] == "/mnt/kubetune/model-cache"
    assert "KUBETUNE_MODEL_CACHE" not in _env(build_training_job(_context(job), 1))


def test_the_installations_allowed_dataset_networks_reach_training_and_preflight_pods(job: dict[str, Any]) -> None:
    networks = Settings.from_env({"KUBETUNE_DATASET_ALLOWED_NETWORKS": "10.20.0.0/16,fd00:1234::/48"})
    context = Context(parse_finetunejob(job), networks)

    for built in (build_training_job(context, 1), build_preflight_job(context)):
        assert _env(built)["KUBETUNE_DATASET_ALLOWED_NETWORKS"] == "10.20.0.0/16,fd00:1234::/48"
        kubernetes_validate.validate(built, KUBERNETES_VERSIONS[-1], strict=True)
    assert "KUBETUNE_DATASET_ALLOWED_NETWORKS" not in _env(build_training_job(_context(job), 1))


def test_automatic_sizing_must_happen_before_building(job: dict[str, Any]) -> None:
    job["spec"]["resources"] = {"accelerators": "auto"}

    with pytest.raises(NotBuildable, match="accelerators is auto"):
        build_training_job(_context(job), 1)


def test_user_extras_are_passed_through(job: dict[str, Any]) -> None:
    job = copy.deepcopy(job)
    job["spec"]["resources"] = {
        "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "nodeSelector": {"pool": "a100"},
        "priorityClassName": "high",
        "podLabels": {"team": "nlp"},
        "imagePullSecrets": [{"name": "regcred"}],
    }

    built = build_training_job(_context(job), 1)
    pod = _pod(built)

    assert _env(built)["NCCL_DEBUG"] == "INFO"
    assert pod["tolerations"][0]["key"] == "gpu"
    assert pod["nodeSelector"] == {"pool": "a100"}
    assert pod["priorityClassName"] == "high"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert built["spec"]["template"]["metadata"]["labels"]["team"] == "nlp"
