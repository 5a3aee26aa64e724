"""Pure builders of a FineTuneJob's children: the spec ConfigMap, the headless Service,
one Indexed Job per training attempt, and the CPU-only preflight Job.

Each returns a plain dict. The pod template is assembled from small modifiers, one per
feature (volumes, accelerators, scheduling, Kueue, ...), so each reads and tests alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api import API_VERSION, KIND, FineTuneJob
from kubetune.api.resource import dump_spec
from kubetune.api.spec import FineTuneJobSpec
from kubetune.catalog import presets
from kubetune.contract import DEFAULT_PATHS, Env, ExitCode, Launch, PodEnvironment
from kubetune.controller import names
from kubetune.controller.references import references
from kubetune.controller.settings import RENDEZVOUS_PORT, Settings

Manifest = dict[str, Any]
PodSpec = dict[str, Any]

SPEC_FILE = "spec.json"
SPEC_MOUNT = DEFAULT_PATHS[Env.SPEC].rsplit("/", 1)[0]
TRAINER = "trainer"
JOB_LABEL = "kubetune.io/finetunejob"
ATTEMPT_LABEL = "kubetune.io/attempt"
ROLE_LABEL = "kubetune.io/role"
STARTED_SPEC_ANNOTATION = "kubetune.io/started-spec"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
NON_RETRYABLE = tuple(code for code in ExitCode if code is not ExitCode.OK and not code.retryable)
PREFLIGHT_RESOURCES = {"cpu": "1", "memory": "4Gi"}


class NotBuildable(ValueError):
    """The spec leaves open something the builders need (e.g. accelerators: auto)."""


@dataclass(frozen=True)
class Context:
    """What a builder needs besides the spec: the object's identity and the settings."""

    job: FineTuneJob
    settings: Settings

    @property
    def name(self) -> str:
        assert self.job.metadata.name, "a FineTuneJob has a name by the time it is built"
        return self.job.metadata.name

    @property
    def namespace(self) -> str:
        return self.job.metadata.namespace or "default"

    @property
    def spec(self) -> FineTuneJobSpec:
        return self.job.spec


# ----------------------------------------------------------------------------- metadata


def labels(context: Context, **extra: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kubetune",
        "app.kubernetes.io/managed-by": "kubetune-operator",
        JOB_LABEL: names.label_value(context.name),
        **extra,
    }


def metadata(context: Context, name: str, **extra_labels: str) -> Manifest:
    meta: Manifest = {"name": name, "namespace": context.namespace, "labels": labels(context, **extra_labels)}
    uid = (context.job.metadata.model_extra or {}).get("uid")
    if uid:
        meta["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": context.name,
                "uid": uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return meta


# ----------------------------------------------------------------------------- ConfigMap and Service


def build_config_map(context: Context) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(context, names.config_map_name(context.name)),
        "data": {SPEC_FILE: dump_spec(context.spec)},
    }


def build_service(context: Context) -> Manifest:
    """Headless, and publishing pods before they are Ready: rank 0 needs a DNS name while
    it is still starting, or the other ranks cannot find it."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(context, names.service_name(context.name)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {JOB_LABEL: names.label_value(context.name), ROLE_LABEL: "train"},
            "ports": [
                {"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT},
                {
                    "name": "progress",
                    "port": context.settings.progress_port,
                    "targetPort": context.settings.progress_port,
                },
            ],
        },
    }


# ----------------------------------------------------------------------------- Jobs


def accelerators_per_node(spec: FineTuneJobSpec) -> int:
    count = spec.resources.accelerators
    if count == "auto":
        raise NotBuildable("resources.accelerators is auto: the operator sizes the job before building it")
    return count


def build_training_job(
    context: Context, attempt: int, deadline_seconds: int | None = None, started: Mapping[str, Any] | None = None
) -> Manifest:
    """One attempt: an Indexed Job of `nodes` pods, all or nothing. `started`: see `with_started_spec`."""
    spec = context.spec
    job_name = names.attempt_job_name(context.name, attempt)
    per_node = accelerators_per_node(spec)
    pod = _pod(
        context,
        role="train",
        attempt=attempt,
        command=["python", "-m", "kubetune_trainer.launch"],
        launch=Launch(
            nodes=spec.resources.nodes,
            procs_per_node=max(per_node, 1),
            master_addr=names.rank0_host(context.name, attempt),
            master_port=RENDEZVOUS_PORT,
        ),
        modifiers=[
            with_resources(per_node),
            with_shared_memory,
            with_service_subdomain,
            with_ports,
        ],
    )
    job_spec: Manifest = {
        "completionMode": "Indexed",
        "completions": spec.resources.nodes,
        "parallelism": spec.resources.nodes,
        "backoffLimit": 0,
        "podFailurePolicy": _failure_policy(),
        "suspend": spec.suspend or spec.queue_name is not None,
        "template": pod,
    }
    if deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = deadline_seconds
    meta = metadata(context, job_name, **{ATTEMPT_LABEL: str(attempt), ROLE_LABEL: "train"})
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": with_started_spec(_with_queue(context, meta), started),
        "spec": job_spec,
    }


def build_preflight_job(context: Context, started: Mapping[str, Any] | None = None) -> Manifest:
    """Fetch, check and tokenise the data on a CPU before any accelerator is asked for."""
    pod = _pod(
        context,
        role="preflight",
        attempt=0,
        command=["python", "-m", "kubetune_trainer.preflight"],
        modifiers=[with_preflight_resources],
        cpu_image=True,
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": with_started_spec(
            _with_queue(
                context, metadata(context, names.preflight_job_name(context.name), **{ROLE_LABEL: "preflight"})
            ),
            started,
        ),
        "spec": {
            "completions": 1,
            "parallelism": 1,
            "backoffLimit": 0,
            "podFailurePolicy": _failure_policy(),
            "suspend": context.spec.queue_name is not None,
            "template": pod,
        },
    }


def _failure_policy() -> Manifest:
    """Preemption, eviction and node drains fail the attempt as disruptions (the operator
    reports Preempted and does not count it); bad spec, bad data, out-of-memory and a full
    disk fail it for good. backoffLimit 0 fails the attempt on any other pod failure: one
    lost rank would otherwise leave the others waiting."""
    return {
        "rules": [
            {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": TRAINER,
                    "operator": "In",
                    "values": [int(code) for code in NON_RETRYABLE],
                },
            },
        ]
    }


def with_started_spec(meta: Manifest, started: Mapping[str, Any] | None) -> Manifest:
    """The spec as the author wrote it when the job started (but for suspend), on each Job the
    operator makes for it: the operator tells from it an edit that an API server without the
    CRD's CEL rules let through, and reads it with the Jobs it lists anyway."""
    if started is not None:
        meta["annotations"] = {STARTED_SPEC_ANNOTATION: json.dumps(started, sort_keys=True, separators=(",", ":"))}
    return meta


def _with_queue(context: Context, meta: Manifest) -> Manifest:
    if context.spec.queue_name is not None:
        meta["labels"][KUEUE_QUEUE_LABEL] = context.spec.queue_name
    return meta


# ----------------------------------------------------------------------------- the pod

PodModifier = Callable[[Context, PodSpec], None]


def _pod(
    context: Context,
    role: str,
    attempt: int,
    command: list[str],
    modifiers: list[PodModifier],
    cpu_image: bool = False,
    launch: Launch | None = None,
) -> Manifest:
    spec = context.spec
    resources = spec.resources
    container: Manifest = {
        "name": TRAINER,
        "image": _image(context, cpu_image),
        "command": command,
        "env": _environment(context, launch),
        "volumeMounts": [],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod: PodSpec = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": resources.termination_grace_period_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [],
    }
    common = [
        with_spec_file,
        with_scratch,
        with_model_cache,
        with_references,
        with_scheduling,
        with_user_extras,
    ]
    for modifier in [*common, *modifiers]:
        modifier(context, pod)
    pod_labels = {**resources.pod_labels, **labels(context, **{ROLE_LABEL: role, ATTEMPT_LABEL: str(attempt)})}
    return {"metadata": {"labels": pod_labels, "annotations": dict(resources.pod_annotations)}, "spec": pod}


def _container(pod: PodSpec) -> Manifest:
    return pod["containers"][0]  # type: ignore[no-any-return]


def _mount(pod: PodSpec, volume: Manifest, path: str, read_only: bool = False) -> None:
    pod["volumes"].append(volume)
    mount: Manifest = {"name": volume["name"], "mountPath": path}
    if read_only:
        mount["readOnly"] = True
    _container(pod)["volumeMounts"].append(mount)


def _image(context: Context, cpu_image: bool) -> str:
    if context.spec.resources.image:
        return context.spec.resources.image
    gpu = not cpu_image and accelerators_per_node(context.spec) > 0
    return context.settings.trainer_image if gpu else context.settings.trainer_cpu_image


def _environment(context: Context, launch: Launch | None) -> list[Manifest]:
    """The contract's environment (kubetune.contract.PodEnvironment), then the libraries' own."""
    settings = context.settings
    environment = PodEnvironment(
        spec=Path(SPEC_MOUNT) / SPEC_FILE,
        job_name=context.name,
        namespace=context.namespace,
        progress_port=settings.progress_port,
        model_cache=Path(DEFAULT_PATHS[Env.MODEL_CACHE]) if settings.model_cache_claim is not None else None,
        allowed_networks=settings.dataset_allowed_networks,
        launch=launch,
    )
    work = environment.work
    libraries = {
        # Libraries cache under HOME; the root file system is read-only.
        "HOME": f"{work}/home",
        "HF_HOME": f"{work}/huggingface",
        "TRITON_CACHE_DIR": f"{work}/triton",
        "PYTHONUNBUFFERED": "1",
    }
    return [*environment.pod_env(), *({"name": key, "value": value} for key, value in libraries.items())]


def with_spec_file(context: Context, pod: PodSpec) -> None:
    volume = {"name": "spec", "configMap": {"name": names.config_map_name(context.name)}}
    _mount(pod, volume, SPEC_MOUNT, read_only=True)


def with_scratch(context: Context, pod: PodSpec) -> None:
    _mount(pod, {"name": "work", "emptyDir": {}}, DEFAULT_PATHS[Env.WORK])
    _mount(pod, {"name": "tmp", "emptyDir": {}}, "/tmp")


def with_model_cache(context: Context, pod: PodSpec) -> None:
    """The installation's shared model cache: a Hub model is downloaded once per cluster,
    not once per pod and attempt."""
    claim = context.settings.model_cache_claim
    if claim is None:
        return
    _mount(pod, {"name": "model-cache", "persistentVolumeClaim": {"claimName": claim}}, DEFAULT_PATHS[Env.MODEL_CACHE])


def with_references(context: Context, pod: PodSpec) -> None:
    """Each claim, ConfigMap and Secret the spec names, mounted where the trainer looks.
    Secrets become files, never environment variables."""
    found = references(context.spec)
    for index, claim in enumerate(found.claims):
        _mount(
            pod,
            {"name": f"claim-{index}", "persistentVolumeClaim": {"claimName": claim}},
            f"{DEFAULT_PATHS[Env.VOLUMES]}/{claim}",
        )
    for index, config_map in enumerate(found.config_maps):
        _mount(
            pod,
            {"name": f"configmap-{index}", "configMap": {"name": config_map}},
            f"{DEFAULT_PATHS[Env.CONFIGMAPS]}/{config_map}",
            read_only=True,
        )
    for index, secret in enumerate(found.secrets):
        _mount(
            pod,
            {"name": f"secret-{index}", "secret": {"secretName": secret, "defaultMode": 0o400}},
            f"{DEFAULT_PATHS[Env.SECRETS]}/{secret}",
            read_only=True,
        )


def with_scheduling(context: Context, pod: PodSpec) -> None:
    resources = context.spec.resources
    if resources.node_selector:
        pod["nodeSelector"] = dict(resources.node_selector)
    if resources.tolerations:
        pod["tolerations"] = list(resources.tolerations)
    if resources.affinity:
        pod["affinity"] = dict(resources.affinity)
    if resources.priority_class_name:
        pod["priorityClassName"] = resources.priority_class_name
    if resources.service_account_name:
        pod["serviceAccountName"] = resources.service_account_name
    if resources.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in resources.image_pull_secrets]


def with_user_extras(context: Context, pod: PodSpec) -> None:
    resources = context.spec.resources
    container = _container(pod)
    container["env"] += list(resources.env)
    pod["volumes"] += list(resources.volumes)
    container["volumeMounts"] += list(resources.volume_mounts)


def with_resources(per_node: int) -> PodModifier:
    def modify(context: Context, pod: PodSpec) -> None:
        resources = context.spec.resources
        preset = presets().get(context.spec.model.preset or "")
        cpu = resources.cpu or (preset.resources.cpu if preset else context.settings.default_cpu)
        memory = resources.memory or (preset.resources.memory if preset else context.settings.default_memory)
        limits: Manifest = {"cpu": str(cpu), "memory": str(memory)}
        if per_node > 0:
            limits[resources.accelerator_resource] = str(per_node)
        _container(pod)["resources"] = {"requests": dict(limits), "limits": limits}

    return modify


def with_preflight_resources(context: Context, pod: PodSpec) -> None:
    _container(pod)["resources"] = {"requests": dict(PREFLIGHT_RESOURCES), "limits": dict(PREFLIGHT_RESOURCES)}


def with_shared_memory(context: Context, pod: PodSpec) -> None:
    """A memory-backed /dev/shm of the spec's size: the container default of 64Mi breaks
    NCCL and multi-worker data loaders."""
    volume = {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": str(context.spec.resources.shared_memory)}}
    _mount(pod, volume, "/dev/shm")


def with_service_subdomain(context: Context, pod: PodSpec) -> None:
    pod["subdomain"] = names.service_name(context.name)


def with_ports(context: Context, pod: PodSpec) -> None:
    _container(pod)["ports"] = [
        {"name": "rendezvous", "containerPort": RENDEZVOUS_PORT},
        {"name": "progress", "containerPort": context.settings.progress_port},
    ]


def build_children(context: Context, attempt: int = 1) -> list[Manifest]:
    """Everything the operator creates for a job before its first attempt runs."""
    children = [build_config_map(context), build_service(context)]
    if context.spec.dataset.preflight:
        children.append(build_preflight_job(context))
    children.append(build_training_job(context, attempt))
    return children
