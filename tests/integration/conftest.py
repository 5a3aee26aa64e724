"""Fixtures for integration tests: a strict emulated API server on loopback, and clients for it."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import kmock
import kubernetes
import pytest
import pytest_asyncio
import yaml

from tests.integration.emulator import StrictKubernetesEmulator

REPO = Path(__file__).parents[2]
CRD_PATH = REPO / "crds" / "kubetune.io_finetunejobs.yaml"


@dataclasses.dataclass(frozen=True)
class ApiServer:
    """A running emulated API server: the emulator for controls and assertions, and how to reach it."""

    emulator: StrictKubernetesEmulator
    url: str
    kubeconfig: Path


def kubeconfig_for(url: str) -> dict[str, Any]:
    """A kubeconfig with one context for the server; the token is a dummy, the emulator takes any."""
    context = {"cluster": "emulated", "user": "tester", "namespace": "default"}
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulated", "cluster": {"server": url}}],
        "users": [{"name": "tester", "user": {"token": "dummy-token"}}],
        "contexts": [{"name": "emulated", "context": context}],
        "current-context": "emulated",
    }


@functools.cache
def project_crd() -> dict[str, Any]:
    """The project's CRD, parsed once: the emulator copies what it is given."""
    return yaml.load(CRD_PATH.read_text(), Loader=yaml.CSafeLoader)


@pytest_asyncio.fixture
async def apiserver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ApiServer]:
    """The emulator with the project's CRD and the `default` namespace, served on 127.0.0.1.

    KUBECONFIG points at it, so Kopf and the kubernetes client find it as they would a cluster.
    """
    async with StrictKubernetesEmulator(crds=[project_crd()]) as emulator, kmock.Server(emulator) as server:
        emulator.create_object("", "v1", "namespaces", {"metadata": {"name": "default"}})
        url = str(server.url)
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(kubeconfig_for(url)))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        try:
            yield ApiServer(emulator, url, kubeconfig)
        finally:
            # An open watch would hold up the server's shutdown for its whole grace period.
            emulator.close_watches()
        assert not emulator.internal_errors(), "the emulator failed while serving"


@pytest.fixture
def kube_client(apiserver: ApiServer) -> Iterator[kubernetes.client.ApiClient]:
    """A synchronous client for the emulator: call it through `asyncio.to_thread`, as the
    emulator serves from the test's own event loop."""
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(apiserver.kubeconfig), client_configuration=configuration)
    with kubernetes.client.ApiClient(configuration) as client:
        yield client


# The parts a cluster plays around the operator (the Job controller, the kubelet, Kueue, rank 0's
# /progress) and the operator itself, as fixtures for every integration test.
from .actors import cluster, operator, progress  # noqa: E402, F401
