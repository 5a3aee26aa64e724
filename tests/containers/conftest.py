"""Fixtures for the container tier: the operator and trainer images (built by
deploy/podman/images.sh, cached), the emulated API server, a node that runs every pod as a
podman container, and the operator running in its own image.

The tier needs podman and buildah as root (`make container-tools`); without them its tests
skip, saying why. Every container a test starts is removed when the test ends, passed or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import pytest_asyncio

from kubetune import __version__
from kubetune.controller.cluster import KINDS, Rest
from tests.containers.kubelet import KUBELET_LABEL, Node, podman
from tests.integration.conftest import REPO, ApiServer, apiserver, kube_client  # noqa: F401  (fixtures)

NAMESPACE = "default"
CONTAINERS_CONF = REPO / "deploy" / "podman" / "containers.conf"
IMAGE_BUILD_TIMEOUT = 3600
"""A cold build of both images on a loaded two-core machine; a cached one takes seconds."""


@dataclasses.dataclass(frozen=True)
class Images:
    operator: str
    trainer: str


def _tools_missing() -> str | None:
    if os.geteuid() != 0:
        return "the container tier runs containers as root"
    missing = [tool for tool in ("podman", "buildah", "runc") if shutil.which(tool) is None]
    return f"{', '.join(missing)} not installed (make container-tools)" if missing else None


@pytest.fixture(scope="session", autouse=True)
def containers_conf() -> Iterator[None]:
    """podman reads the project's settings (runc, host network, no default ulimits)."""
    previous = os.environ.get("CONTAINERS_CONF")
    os.environ["CONTAINERS_CONF"] = previous or str(CONTAINERS_CONF)
    yield
    if previous is None:
        os.environ.pop("CONTAINERS_CONF", None)


@pytest.fixture(scope="session")
def images() -> Images:
    """Both images, built once per content (deploy/podman/images.sh skips an unchanged one)."""
    why = _tools_missing()
    if why:
        pytest.skip(why)
    tags = Images(
        operator=f"ghcr.io/kubetune/operator:{__version__}", trainer=f"ghcr.io/kubetune/trainer:{__version__}-cpu"
    )
    env = {**os.environ, "OPERATOR_IMAGE": tags.operator, "TRAINER_CPU_IMAGE": tags.trainer}
    started = time.monotonic()
    result = subprocess.run(
        [str(REPO / "deploy" / "podman" / "images.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=IMAGE_BUILD_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"the images did not build:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    print(f"images ready in {time.monotonic() - started:.0f}s: {result.stderr.strip()}")
    return tags


@contextlib.contextmanager
def own_folder(what: str) -> Iterator[Path]:
    """A temporary folder of this tier's own. Not pytest's tmp_path: other pytest runs on the
    machine prune pytest's numbered folders, and these outlive many of them."""
    folder = Path(tempfile.mkdtemp(prefix=f"kubetune-containers-{what}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model(images: Images) -> Iterator[Path]:
    """The quickstart's tiny model, made once by `kubetune make-tiny-model` in the trainer image."""
    with own_folder("models") as folder:
        yield make_tiny_model(images, folder)


def make_tiny_model(images: Images, folder: Path) -> Path:
    folder.chmod(0o777)
    quickstart = REPO / "examples" / "quickstart.yaml"
    subprocess.run(
        ["podman", "run", "--rm", "--pull", "never", "--network", "none", "--label", f"{KUBELET_LABEL}=tiny-model",
         "--volume", f"{folder}:/models:rw", "--volume", f"{quickstart}:/corpus/quickstart.yaml:ro",
         images.trainer, "kubetune", "make-tiny-model", "/models/tiny-phi3", "--corpus", "/corpus/quickstart.yaml"],
        check=True, timeout=600,
    )  # fmt: skip
    return folder / "tiny-phi3"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclasses.dataclass
class Deployment:
    """The emulated cluster with real containers: the API server, the node, and helpers to
    submit and read objects."""

    apiserver: ApiServer
    node: Node
    rest: Rest
    claims: Path
    progress_port: int

    async def create(self, body: dict[str, Any]) -> None:
        kind = KINDS.get(body["kind"])
        path = kind.path(NAMESPACE) if kind else f"/api/v1/namespaces/{NAMESPACE}/{body['kind'].lower()}s"
        await asyncio.to_thread(self.rest.call, "POST", path, body)

    def get(self, group: str, version: str, plural: str, name: str) -> dict[str, Any] | None:
        return self.apiserver.emulator.get_object(group, version, plural, NAMESPACE, name)

    def jobs(self) -> list[str]:
        return [j["metadata"]["name"] for j in self.apiserver.emulator.list_objects("batch", "v1", "jobs", NAMESPACE)]

    def status(self, name: str) -> dict[str, Any]:
        job = self.get("kubetune.io", "v1alpha1", "finetunejobs", name) or {}
        return job.get("status") or {}

    def reasons(self, name: str) -> list[str]:
        events = self.apiserver.emulator.list_objects("", "v1", "events", NAMESPACE)
        mine = [e for e in events if e["involvedObject"]["name"] == name]
        return [e["reason"] for e in sorted(mine, key=lambda e: int(e["metadata"]["resourceVersion"]))]

    def claim(self, name: str) -> Path:
        """A bound claim: a folder any pod user may write to, as a local-path provisioner makes it."""
        folder = self.claims / name
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o777)
        return folder

    async def until(self, check: Any, what: str, timeout: float) -> Any:
        """Poll `check` (once a second, yielding to the emulator) until it is truthy; fail
        with `what` and the node's errors after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            assert not self.node.errors, f"the node failed while waiting for {what}: {self.node.errors}"
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
            await asyncio.sleep(1.0)


@pytest_asyncio.fixture
async def deployment(
    apiserver: ApiServer,  # noqa: F811
    kube_client: kubernetes.client.ApiClient,  # noqa: F811
    images: Images,
) -> AsyncIterator[Deployment]:
    """The emulated API server with a node that runs pods as containers. Every container the
    node started is removed afterwards, and a tick that failed fails the test."""
    with own_folder("node") as folder:
        rest = Rest(kube_client)
        claims = folder / "claims"
        claims.mkdir()
        node = Node(apiserver.emulator, rest, NAMESPACE, claims=claims, root=folder / "pods")
        stop = asyncio.Event()
        loop = asyncio.create_task(node.run(stop))
        try:
            yield Deployment(apiserver, node, rest, claims, free_port())
        finally:
            stop.set()
            await asyncio.wait_for(loop, 60)
            await node.close()
    assert not node.errors, f"the node failed: {node.errors}"


@pytest_asyncio.fixture
async def operator_container(deployment: Deployment, images: Images) -> AsyncIterator[str]:
    """`kubetune operator` in the operator image, as its Deployment runs it (uid 65532, a
    read-only root), against the emulated API server; its log is printed when it stops."""
    name = f"kt-operator-{uuid.uuid4().hex[:8]}"
    env = {
        "KUBECONFIG": "/etc/kubetune/kubeconfig",
        "KUBETUNE_NAMESPACES": NAMESPACE,
        "KUBETUNE_TRAINER_CPU_IMAGE": images.trainer,
        "KUBETUNE_TRAINER_IMAGE": images.trainer,
        "KUBETUNE_PROGRESS_PORT": str(deployment.progress_port),
        "KUBETUNE_PROGRESS_INTERVAL": "2",
        "KUBETUNE_METRICS_PORT": "0",
        "KUBETUNE_HEALTH_PORT": "0",
        "KUBETUNE_DEFAULT_CPU": "1",
        "KUBETUNE_DEFAULT_MEMORY": "2Gi",
    }
    args = [
        "run",
        "--detach",
        "--name",
        name,
        "--pull",
        "never",
        "--network",
        "host",
        "--label",
        f"{KUBELET_LABEL}=operator",
    ]
    args += ["--user", "65532:65532", "--read-only", "--read-only-tmpfs=false", "--cap-drop=ALL"]
    args += [
        "--security-opt",
        "no-new-privileges",
        "--volume",
        f"{deployment.apiserver.kubeconfig}:/etc/kubetune/kubeconfig:ro",
    ]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    deployment.apiserver.kubeconfig.chmod(0o644)
    await podman(*args, images.operator, "operator")
    try:
        yield name
    finally:
        print("---- operator log ----")
        print((await podman("logs", "--tail", "200", name, check=False, both=True))[-20000:])
        await podman("rm", "--force", "--time", "0", name, check=False)
