"""`accelerators: auto` for a model named by its Hub repository, through the real operator:
the preflight runs first with no accelerator, reports the model's facts, and the training
Job is sized from them, with the spec ConfigMap it reads sized too."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from kubetune.api.status import FineTuneJobStatus
from kubetune.contract import RunSummary
from kubetune.controller.settings import AcceleratorProfile
from kubetune.estimate import read_model_facts

from ..unit.controller.test_reconcile_model_facts import PHI3_MINI
from .actors import Cluster, Operator, Progress, _manifest, eventually
from .conftest import ApiServer

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

A100 = AcceleratorProfile("a100", "nvidia.com/gpu", 80, 8, {"gpu": "a100"})


@pytest_asyncio.fixture
async def sizing_operator(operator: Operator) -> AsyncIterator[Operator]:
    """The operator with an accelerator profile to size from."""
    await operator.halt()
    sizing = Operator(dataclasses.replace(operator.settings, accelerator_profiles=(A100,)), operator.apiserver)
    await sizing.start()
    try:
        yield sizing
    finally:
        await sizing.halt()


async def test_a_hub_model_is_sized_from_the_facts_its_preflight_reported(
    sizing_operator: Operator, cluster: Cluster, progress: Progress, job: dict[str, Any], apiserver: ApiServer
) -> None:
    body = _manifest(
        job,
        model={"huggingFace": {"repo": "microsoft/Phi-3-mini-128k-instruct"}},
        resources={"accelerators": "auto"},
    )
    await cluster.submit(body)

    await eventually(lambda: "demo-preflight" in cluster.jobs(), "the preflight Job")
    unsized = json.loads(cluster.get(("", "v1", "configmaps"), "demo-spec")["data"]["spec.json"])  # type: ignore[index]
    assert unsized["resources"]["accelerators"] == "auto"
    await cluster.start_pods("demo-preflight")
    preflight = RunSummary(status="Succeeded", message="data checked", model_facts=read_model_facts(PHI3_MINI))
    await cluster.finish("demo-preflight", 0, preflight)

    await eventually(lambda: "demo-a1" in cluster.jobs(), "the first training Job")
    pod = cluster.jobs()["demo-a1"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"]["gpu"] == "a100"
    sized = json.loads(cluster.get(("", "v1", "configmaps"), "demo-spec")["data"]["spec.json"])  # type: ignore[index]
    assert sized["resources"]["accelerators"] == 1
    assert FineTuneJobStatus.model_validate(cluster.status()).model_facts == preflight.model_facts
