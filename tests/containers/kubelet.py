"""The Job controller and a kubelet that runs every pod as a real container (podman), for the
emulated API server of the integration tests.

The Job controller makes the pods of each unsuspended Job (Indexed: one per completion index,
with the hostname `<job>-<index>` and JOB_COMPLETION_INDEX) and writes the Job's status from
its pods, failing it on the first failed pod as `backoffLimit: 0` and the pod failure policy
do. The kubelet starts each pod's container from the pod's image with its command, args,
environment, working directory, security context, volumes and termination message file;
gives the pod an address on the loopback range (127.0.0.x, never another) and writes hosts
entries for the pods under the same headless Service; writes phase and container state back
through the API; and stops a container with SIGTERM, then SIGKILL after the grace period,
when its pod is deleted or evicted.

Both run as one loop on the test's event loop (the emulator serves from it too): each tick
reads the store, makes the pods of new Jobs, then starts, watches and stops containers. Every
container carries a label naming this kubelet, and `close` removes every one of them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.contract import TERMINATION_MESSAGE_LIMIT
from kubetune.controller.cluster import KINDS, Rest
from tests.integration.emulator import StrictKubernetesEmulator

Obj = dict[str, Any]
MERGE = "application/merge-patch+json"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
KUBELET_LABEL = "io.kubetune.test-kubelet"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
LOG_FALLBACK_LINES = 80
LOG_FALLBACK_BYTES = 2048
"""What the kubelet keeps of the log when FallbackToLogsOnError finds the message file empty."""
FIRST_POD_ADDRESS = 10
"""127.0.0.1 is the API server's; pods get 127.0.0.10 and up."""
PODMAN_TIMEOUT = 120.0
"""Longest one podman command may take (a `run` on a loaded machine); a hung one fails the tick."""


class PodmanError(RuntimeError):
    pass


async def podman(*args: str, timeout: float = PODMAN_TIMEOUT, check: bool = True, both: bool = False) -> str:
    """Run `podman ARGS` and return its standard output (with its standard error when `both`:
    `podman logs` replays a container's stderr on its own)."""
    process = await asyncio.create_subprocess_exec(
        "podman",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if both else asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise PodmanError(f"podman {args[0]} took more than {timeout:.0f}s") from None
    if check and process.returncode != 0:
        raise PodmanError(f"podman {' '.join(args[:2])} failed ({process.returncode}): {(err or b'').decode().strip()}")
    return out.decode()


def quantity_bytes(text: str) -> int:
    """A Kubernetes memory quantity (`64Mi`, `1G`, `1024`) in bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?|[kE]|)", str(text))
    if not match:
        raise ValueError(f"not a quantity: {text!r}")
    number, unit = float(match.group(1)), match.group(2)
    powers = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    binary = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return int(number * (binary.get(unit) or powers[unit]))


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ----------------------------------------------------------------------------- the Job controller


def failure_policy_matches(job: Obj, pod: Obj) -> bool:
    """Whether a FailJob rule of the Job's podFailurePolicy matches this failed pod."""
    rules = (job["spec"].get("podFailurePolicy") or {}).get("rules") or []
    conditions = {c["type"]: c.get("status") for c in pod.get("status", {}).get("conditions") or []}
    codes = {
        s["name"]: s["state"]["terminated"].get("exitCode")
        for s in pod.get("status", {}).get("containerStatuses") or []
        if "terminated" in (s.get("state") or {})
    }
    for rule in rules:
        if rule.get("action") != "FailJob":
            continue
        for pattern in rule.get("onPodConditions") or []:
            if conditions.get(pattern["type"]) == pattern.get("status", "True"):
                return True
        exit_codes = rule.get("onExitCodes")
        if exit_codes:
            observed = [codes.get(exit_codes["containerName"])] if exit_codes.get("containerName") else codes.values()
            inside = [code in exit_codes["values"] for code in observed if code is not None]
            if any(inside) if exit_codes["operator"] == "In" else any(not i for i in inside):
                return True
    return False


# ----------------------------------------------------------------------------- the kubelet


@dataclass
class RunningPod:
    """A pod this kubelet has started a container for."""

    name: str
    uid: str
    container: str
    address: str
    folder: Path
    termination_file: Path
    policy: str
    started_at: str
    grace_seconds: int
    stopping: bool = False
    done: bool = False
    exit_code: int | None = None
    """The container's, once it has exited (kept when the pod is deleted before that)."""


@dataclass
class Node:
    """The Job controller and the kubelet of one node, over the emulated API server.

    `claims` is the folder that holds one folder per PersistentVolumeClaim (named by the
    claim); `root` holds each pod's own files (emptyDirs, ConfigMap and Secret files, the
    termination message file)."""

    emulator: StrictKubernetesEmulator
    rest: Rest
    namespace: str
    claims: Path
    root: Path
    tick_seconds: float = 0.3
    kubelet_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    pods: dict[str, RunningPod] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    jobs_started: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    stop_tasks: set[asyncio.Task[None]] = field(default_factory=set)

    # ------------------------------------------------------------------------- API

    async def call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        return await asyncio.to_thread(self.rest.call, method, path, body, (), content_type)

    def listed(self, group: str, version: str, plural: str) -> list[Obj]:
        return self.emulator.list_objects(group, version, plural, self.namespace)

    def fetched(self, group: str, version: str, plural: str, name: str) -> Obj | None:
        return self.emulator.get_object(group, version, plural, self.namespace, name)

    async def patch_status(self, kind: str, name: str, status: Obj) -> None:
        await self.call("PATCH", KINDS[kind].path(self.namespace, name, "status"), {"status": status}, MERGE)

    # ------------------------------------------------------------------------- the loop

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop` is set. A tick that fails is recorded in `errors` (the test's
        fixture fails on them) and the loop goes on, as a kubelet does."""
        while not stop.is_set():
            try:
                await self.tick()
            except Exception as error:  # kept for the test to report, not hidden
                self.errors.append(f"{type(error).__name__}: {error}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.tick_seconds)

    async def tick(self) -> None:
        await self.control_jobs()
        current = {p["metadata"]["name"]: p for p in self.listed("", "v1", "pods")}
        for name, running in list(self.pods.items()):
            pod = current.get(name)
            gone = pod is None or pod["metadata"]["uid"] != running.uid or pod["metadata"].get("deletionTimestamp")
            if gone and not running.done and not running.stopping:
                self.stop_later(running, running.grace_seconds)
        new = [p for n, p in current.items() if n not in self.pods and not p.get("status", {}).get("phase")]
        for pod in new:
            self.addresses[pod["metadata"]["name"]] = self.next_address()
        for pod in new:
            await self.start(pod, current.values())
        await self.watch_containers()

    def stop_later(self, running: RunningPod, grace: int) -> None:
        running.stopping = True
        task = asyncio.create_task(self.stop_container(running, grace))
        self.stop_tasks.add(task)
        task.add_done_callback(self.stop_tasks.discard)

    async def stop_container(self, running: RunningPod, grace: int) -> None:
        """SIGTERM, then SIGKILL after the grace period: what `podman stop --time` does."""
        try:
            await podman("stop", "--time", str(grace), running.container, timeout=grace + PODMAN_TIMEOUT, check=False)
        except PodmanError as error:
            self.errors.append(str(error))

    # ------------------------------------------------------------------------- the Job controller

    async def control_jobs(self) -> None:
        pods = self.listed("", "v1", "pods")
        for job in self.listed("batch", "v1", "jobs"):
            meta, status = job["metadata"], job.get("status") or {}
            if job["spec"].get("suspend") or any(
                c["type"] in ("Complete", "Failed") for c in status.get("conditions") or []
            ):
                continue
            if meta["uid"] not in self.jobs_started:
                await self.make_pods(job)
                self.jobs_started.add(meta["uid"])
                continue
            mine = [
                p for p in pods if any(o.get("uid") == meta["uid"] for o in p["metadata"].get("ownerReferences", []))
            ]
            await self.write_job_status(job, mine)

    async def make_pods(self, job: Obj) -> None:
        name, spec = job["metadata"]["name"], job["spec"]
        template = spec["template"]
        indexed = spec.get("completionMode") == "Indexed"
        for index in range(spec.get("completions", 1)):
            pod_spec = json.loads(json.dumps(template["spec"]))
            annotations = dict(template["metadata"].get("annotations") or {})
            suffix = uuid.uuid4().hex[:5]
            if indexed:
                annotations[COMPLETION_INDEX] = str(index)
                pod_spec.setdefault("hostname", f"{name}-{index}")
                for container in pod_spec["containers"]:
                    container.setdefault("env", []).append(
                        {
                            "name": "JOB_COMPLETION_INDEX",
                            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}},
                        }
                    )
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{name}-{index}-{suffix}" if indexed else f"{name}-{suffix}",
                    "labels": {**template["metadata"].get("labels", {}), "batch.kubernetes.io/job-name": name},
                    "annotations": annotations,
                    "ownerReferences": [
                        {
                            "apiVersion": "batch/v1",
                            "kind": "Job",
                            "name": name,
                            "uid": job["metadata"]["uid"],
                            "controller": True,
                        }
                    ],
                },
                "spec": pod_spec,
            }
            await self.call("POST", KINDS["Pod"].path(self.namespace), pod)
        await self.patch_status("Job", name, {"active": spec.get("completions", 1), "startTime": now()})

    async def write_job_status(self, job: Obj, pods: list[Obj]) -> None:
        phases = [p.get("status", {}).get("phase") for p in pods]
        failed = [p for p in pods if p.get("status", {}).get("phase") == "Failed"]
        succeeded = phases.count("Succeeded")
        active = sum(1 for phase in phases if phase in ("Pending", "Running", None))
        status: Obj = {"active": active, "succeeded": succeeded, "failed": len(failed)}
        if failed:
            by_policy = any(failure_policy_matches(job, p) for p in failed)
            reason = "PodFailurePolicy" if by_policy else "BackoffLimitExceeded"
            status["conditions"] = [
                {"type": "FailureTarget", "status": "True", "reason": reason, "lastTransitionTime": now()},
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": reason,
                    "message": "a pod failed",
                    "lastTransitionTime": now(),
                },
            ]
            # The Job controller ends the pods still running when the Job fails.
            for pod in pods:
                if pod.get("status", {}).get("phase") in ("Pending", "Running"):
                    await self.call("DELETE", KINDS["Pod"].path(self.namespace, pod["metadata"]["name"]))
        elif succeeded >= job["spec"].get("completions", 1):
            status["conditions"] = [
                {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now()},
                {"type": "Complete", "status": "True", "lastTransitionTime": now()},
            ]
            status["completionTime"] = now()
        previous = job.get("status") or {}
        if any(previous.get(key) != value for key, value in status.items() if key != "conditions") or (
            "conditions" in status and not previous.get("conditions")
        ):
            await self.patch_status("Job", job["metadata"]["name"], status)

    # ------------------------------------------------------------------------- starting a pod

    def next_address(self) -> str:
        used = set(self.addresses.values())
        for last in range(FIRST_POD_ADDRESS, 255):
            address = f"127.0.0.{last}"
            if address not in used:
                return address
        raise RuntimeError("no loopback address left for another pod")

    def hosts(self, pod: Obj, pods: Iterable[Obj]) -> list[str]:
        """`--add-host` entries: this pod's and its peers' names under their headless Service."""
        subdomain = pod["spec"].get("subdomain")
        entries = []
        for peer in pods:
            name, spec = peer["metadata"]["name"], peer["spec"]
            hostname = spec.get("hostname") or name
            address = self.addresses.get(name)
            if address is None or (peer is not pod and (not subdomain or spec.get("subdomain") != subdomain)):
                continue
            names = [hostname]
            if subdomain:
                fqdn = f"{hostname}.{subdomain}.{self.namespace}.svc"
                names += [
                    f"{hostname}.{subdomain}",
                    f"{hostname}.{subdomain}.{self.namespace}",
                    fqdn,
                    f"{fqdn}.cluster.local",
                ]
            entries += [f"{host}:{address}" for host in names]
        return entries

    async def start(self, pod: Obj, pods: Iterable[Obj]) -> None:
        name = pod["metadata"]["name"]
        address = self.addresses[name]
        folder = self.root / name
        folder.mkdir(parents=True)
        container = pod["spec"]["containers"][0]
        try:
            args = await self.run_arguments(pod, container, folder, address, pods)
        except ContainerConfigError as error:
            await self.write_pod(
                pod, "Pending", address, {"waiting": {"reason": "CreateContainerConfigError", "message": str(error)}}
            )
            self.pods[name] = RunningPod(
                name, pod["metadata"]["uid"], "", address, folder, folder, "", now(), 0, done=True
            )
            return
        termination = folder / "termination-log"
        running = RunningPod(
            name=name,
            uid=pod["metadata"]["uid"],
            container=f"kt-{self.kubelet_id}-{name}"[:120],
            address=address,
            folder=folder,
            termination_file=termination,
            policy=container.get("terminationMessagePolicy", "File"),
            started_at=now(),
            grace_seconds=int(pod["spec"].get("terminationGracePeriodSeconds", 30)),
        )
        self.pods[name] = running
        await podman("run", "--detach", "--name", running.container, *args)
        await self.write_pod(pod, "Running", address, {"running": {"startedAt": running.started_at}})

    async def write_pod(
        self, pod: Obj, phase: str, address: str, state: Obj, conditions: list[Obj] | None = None
    ) -> None:
        container = pod["spec"]["containers"][0]
        status: Obj = {
            "phase": phase,
            "podIP": address,
            "podIPs": [{"ip": address}],
            "hostIP": "127.0.0.1",
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container["image"],
                    "ready": "running" in state,
                    "restartCount": 0,
                    "state": state,
                }
            ],
        }
        if conditions is not None:
            status["conditions"] = conditions
        await self.patch_status("Pod", pod["metadata"]["name"], status)

    async def run_arguments(
        self, pod: Obj, container: Obj, folder: Path, address: str, pods: Iterable[Obj]
    ) -> list[str]:
        spec = pod["spec"]
        args = ["--pull", "never", "--network", "host", "--label", f"{KUBELET_LABEL}={self.kubelet_id}"]
        args += ["--hostname", spec.get("hostname") or pod["metadata"]["name"]]
        for entry in self.hosts(pod, pods):
            args += ["--add-host", entry]
        args += await self.security_arguments(spec, container)
        for variable in self.environment(pod, container, address):
            args += ["--env", variable]
        if container.get("workingDir"):
            args += ["--workdir", container["workingDir"]]
        args += self.volume_arguments(pod, container, folder)
        if container.get("command"):
            args += ["--entrypoint", json.dumps(container["command"])]
        return [*args, container["image"], *container.get("args", [])]

    async def security_arguments(self, spec: Obj, container: Obj) -> list[str]:
        pod_context, context = spec.get("securityContext") or {}, container.get("securityContext") or {}

        def setting(key: str) -> Any:
            return context.get(key, pod_context.get(key))

        user, group = setting("runAsUser"), setting("runAsGroup")
        if user is None:
            image_user = (await podman("image", "inspect", "--format", "{{.Config.User}}", container["image"])).strip()
            user = image_user.split(":")[0] or "0"
        if setting("runAsNonRoot") and (not str(user).isdigit() or int(user) == 0):
            raise ContainerConfigError(f"runAsNonRoot and the container's user is {user!r}, not a non-zero number")
        args = ["--user", f"{user}:{group}" if group is not None else str(user)]
        for extra in [pod_context.get("fsGroup"), *(pod_context.get("supplementalGroups") or [])]:
            if extra is not None:
                args += ["--group-add", str(extra)]
        if context.get("readOnlyRootFilesystem"):
            # Strictly read-only: no tmpfs on /tmp, /run and /var/tmp that a pod would not have.
            args += ["--read-only", "--read-only-tmpfs=false"]
        if context.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        capabilities = context.get("capabilities") or {}
        args += [f"--cap-drop={c}" for c in capabilities.get("drop") or []]
        args += [f"--cap-add={c}" for c in capabilities.get("add") or []]
        if context.get("privileged"):
            raise ContainerConfigError("this kubelet runs no privileged containers")
        return args

    def environment(self, pod: Obj, container: Obj, address: str) -> list[str]:
        variables = []
        for entry in container.get("env") or []:
            if "value" in entry:
                value = str(entry["value"])
            else:
                value = self.value_from(pod, entry.get("valueFrom") or {}, address)
            variables.append(f"{entry['name']}={value}")
        return variables

    def value_from(self, pod: Obj, source: Obj, address: str) -> str:
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            meta = pod["metadata"]
            fields = {"metadata.name": meta["name"], "metadata.namespace": self.namespace, "status.podIP": address}
            fields["metadata.uid"] = meta["uid"]
            annotation = re.fullmatch(r"metadata\.(annotations|labels)\['(.+)'\]", path)
            if annotation:
                return str((meta.get(annotation.group(1)) or {}).get(annotation.group(2), ""))
            if path not in fields:
                raise ContainerConfigError(f"fieldRef {path} is not one this kubelet knows")
            return str(fields[path])
        for kind, plural in (("secretKeyRef", "secrets"), ("configMapKeyRef", "configmaps")):
            if kind in source:
                ref = source[kind]
                data = self.volume_source_data(plural, ref["name"])
                if ref["key"] not in data:
                    raise ContainerConfigError(f"{kind} {ref['name']}/{ref['key']} does not exist")
                return data[ref["key"]].decode()
        raise ContainerConfigError(f"env valueFrom {sorted(source)} is not one this kubelet knows")

    def volume_source_data(self, plural: str, name: str) -> dict[str, bytes]:
        obj = self.fetched("", "v1", plural, name)
        if obj is None:
            raise ContainerConfigError(f"{plural[:-1]} {name!r} not found")
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        if plural == "secrets":
            data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return data

    def volume_arguments(self, pod: Obj, container: Obj, folder: Path) -> list[str]:
        spec = pod["spec"]
        fs_group = (spec.get("securityContext") or {}).get("fsGroup")
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        args: list[str] = []
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"])
            if volume is None:
                raise ContainerConfigError(f"volumeMount {mount['name']} names no volume")
            target, read_only = mount["mountPath"], bool(mount.get("readOnly"))
            empty_dir = volume.get("emptyDir")
            if empty_dir is not None and empty_dir.get("medium") == "Memory":
                size = quantity_bytes(empty_dir.get("sizeLimit", "64Mi"))
                if target == "/dev/shm":
                    args += ["--shm-size", str(size)]
                else:
                    args += ["--mount", f"type=tmpfs,destination={target},tmpfs-size={size},tmpfs-mode=1777"]
                continue
            source = self.volume_folder(volume, folder, fs_group)
            if mount.get("subPath"):
                source = source / mount["subPath"]
                source.mkdir(parents=True, exist_ok=True)
            options = "ro" if read_only or "configMap" in volume or "secret" in volume else "rw"
            args += ["--volume", f"{source}:{target}:{options}"]
        termination = folder / "termination-log"
        termination.touch()
        termination.chmod(0o666)  # the kubelet's file is writable by the container's user
        target = container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        return [*args, "--volume", f"{termination}:{target}:rw"]

    def volume_folder(self, volume: Obj, folder: Path, fs_group: int | None) -> Path:
        if "persistentVolumeClaim" in volume:
            claim = self.claims / volume["persistentVolumeClaim"]["claimName"]
            if not claim.is_dir():
                raise ContainerConfigError(f"persistentVolumeClaim {claim.name!r} is not bound (no folder {claim})")
            return claim
        path = folder / "volumes" / volume["name"]
        path.mkdir(parents=True)
        if "emptyDir" in volume:
            path.chmod(0o777)  # as the kubelet makes an emptyDir: any user of the pod writes to it
            return path
        for kind, plural, name_key in (("configMap", "configmaps", "name"), ("secret", "secrets", "secretName")):
            if kind in volume:
                source = volume[kind]
                data = self.volume_source_data(plural, source[name_key])
                items = source.get("items") or [{"key": k, "path": k} for k in data]
                mode = source.get("defaultMode", 0o644)
                for item in items:
                    file = path / item["path"]
                    file.parent.mkdir(parents=True, exist_ok=True)
                    file.write_bytes(data[item["key"]])
                    item_mode = item.get("mode", mode)
                    if fs_group is not None:
                        # With an fsGroup the kubelet gives the group what the owner has.
                        os.chown(file, 0, int(fs_group))
                        item_mode |= (item_mode & 0o700) >> 3
                    file.chmod(item_mode)
                path.chmod(0o755)
                return path
        raise ContainerConfigError(f"volume {volume['name']}: only claims, emptyDir, ConfigMaps and Secrets run here")

    # ------------------------------------------------------------------------- watching containers

    async def watch_containers(self) -> None:
        live = [r for r in self.pods.values() if not r.done and r.container]
        if not live:
            return
        out = await podman("container", "inspect", *[r.container for r in live], check=False)
        states = {c["Name"].lstrip("/"): c["State"] for c in json.loads(out or "[]")}
        for running in live:
            state = states.get(running.container)
            if state is None or state.get("Status") not in ("exited", "stopped"):
                continue
            running.done = True
            await self.finish(running, state)

    async def finish(self, running: RunningPod, state: Obj) -> None:
        code = running.exit_code = int(state.get("ExitCode", 1))
        message = running.termination_file.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
        if not message.strip() and code != 0 and running.policy == "FallbackToLogsOnError":
            logs = await podman("logs", "--tail", str(LOG_FALLBACK_LINES), running.container, check=False, both=True)
            message = logs.encode()[-LOG_FALLBACK_BYTES:].decode(errors="replace")
        reason = "OOMKilled" if state.get("OOMKilled") else ("Completed" if code == 0 else "Error")
        terminated: Obj = {
            "exitCode": code,
            "reason": reason,
            "startedAt": running.started_at,
            "finishedAt": now(),
            "containerID": f"podman://{running.container}",
        }
        if message:
            terminated["message"] = message
        pod = self.fetched("", "v1", "pods", running.name)
        if pod is None or pod["metadata"]["uid"] != running.uid:
            return  # deleted: nobody reads its status any more
        await self.write_pod(
            pod,
            "Succeeded" if code == 0 else "Failed",
            running.address,
            {"terminated": terminated},
            conditions=pod.get("status", {}).get("conditions") or [],
        )

    async def evict(self, pod_name: str, reason: str = "EvictionByEvictionAPI") -> None:
        """What an eviction does to a pod of a Job: the DisruptionTarget condition, then
        SIGTERM to its container and SIGKILL after the grace period."""
        pod = self.fetched("", "v1", "pods", pod_name)
        assert pod is not None, f"no pod {pod_name} to evict"
        condition = {"type": "DisruptionTarget", "status": "True", "reason": reason, "lastTransitionTime": now()}
        await self.patch_status("Pod", pod_name, {"conditions": [condition]})
        self.stop_later(self.pods[pod_name], self.pods[pod_name].grace_seconds)

    def logs_path(self, pod_name: str) -> Path:
        return self.pods[pod_name].folder

    async def logs(self, pod_name: str) -> str:
        return await podman("logs", self.pods[pod_name].container, check=False, both=True)

    async def close(self) -> None:
        """Remove every container this kubelet started, running or not."""
        for task in list(self.stop_tasks):
            task.cancel()
        ids = (
            await podman("ps", "--all", "--quiet", "--filter", f"label={KUBELET_LABEL}={self.kubelet_id}", check=False)
        ).split()
        if ids:
            await podman("rm", "--force", "--time", "0", *ids, check=False)


class ContainerConfigError(ValueError):
    """A pod the kubelet cannot make a container for (CreateContainerConfigError)."""


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
