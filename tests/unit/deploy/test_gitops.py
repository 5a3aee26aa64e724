"""GitOps: Argo CD's health check for FineTuneJob (run in Lua 5.1, as Argo CD runs it), Flux's
CEL health expressions, and the Application and HelmRelease examples against the chart."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml

from kubetune.api import parse_finetunejob
from kubetune.api.enums import Phase
from kubetune.crdcheck import crd_problems
from tests.unit.deploy.helm import CHART, REPO, template, tool

GITOPS = REPO / "deploy" / "gitops"
CUSTOMIZATIONS = GITOPS / "argocd" / "resource_customizations"
HEALTH = CUSTOMIZATIONS / "kubetune.io" / "FineTuneJob"
HEALTH_CASES = yaml.safe_load((HEALTH / "health_test.yaml").read_text())["tests"]
# Argo CD's Lua sandbox opens only these standard libraries.
NOT_IN_ARGO = ["io", "os", "debug", "package", "require", "dofile", "loadfile", "load", "loadstring"]


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _sample(case: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load((HEALTH / case["inputPath"]).read_text())  # type: ignore[no-any-return]


def _case_id(case: dict[str, Any]) -> str:
    return Path(case["inputPath"]).stem


# ----------------------------------------------------------------------------- Argo CD, Lua


@pytest.fixture(scope="module")
def lua_health() -> Any:
    try:
        from lupa import lua51
    except ImportError:
        pytest.fail("lupa (Lua for Python) is missing: it comes with the dev extra; run `make venv`")
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    for name in NOT_IN_ARGO:
        runtime.execute(f"{name} = nil")
    script = (HEALTH / "health.lua").read_text()

    def health(obj: dict[str, Any]) -> dict[str, Any]:
        runtime.globals().obj = runtime.table_from(obj, recursive=True)
        result = runtime.execute(script)
        return dict(result.items())

    return health


@pytest.mark.parametrize("case", HEALTH_CASES, ids=_case_id)
def test_argocd_health_check_reads_each_status(lua_health: Any, case: dict[str, Any]) -> None:
    assert lua_health(_sample(case)) == case["healthStatus"]


@pytest.mark.parametrize("case", HEALTH_CASES, ids=_case_id)
def test_health_samples_are_finetunejobs_the_operator_could_write(case: dict[str, Any]) -> None:
    sample = _sample(case)

    assert crd_problems(sample) == []
    parse_finetunejob(sample)


def test_health_samples_cover_every_phase() -> None:
    phases = {_sample(case).get("status", {}).get("phase") for case in HEALTH_CASES}

    assert phases >= {phase.value for phase in Phase} | {None}


def test_health_check_maps_phases_as_argo_cd_expects() -> None:
    """By phase; a job going on with a spec edited under it (one the operator does not apply)
    is Degraded: the edited spec will never be reached."""
    expected = {"Succeeded": "Healthy", "Failed": "Degraded", "Suspended": "Suspended"}
    for case in HEALTH_CASES:
        status = _sample(case).get("status", {})
        valid = next((c for c in status.get("conditions", []) if c["type"] == "Valid"), {})
        edited = valid.get("reason") == "ImmutableSpecChanged" and status.get("phase") not in expected
        wanted = "Degraded" if edited else expected.get(status.get("phase"), "Progressing")
        assert case["healthStatus"]["status"] == wanted, case["inputPath"]


def test_kustomize_component_puts_the_script_into_argocd_cm(tmp_path: Path) -> None:
    kubectl = tool("kubectl")
    # As in Argo CD's kustomize install: install.yaml's objects have no namespace of their own.
    argocd_cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "argocd-cm"}, "data": {"url": "x"}}
    (tmp_path / "install.yaml").write_text(yaml.safe_dump(argocd_cm))
    kustomization = {
        "namespace": "argocd",
        "resources": ["install.yaml"],
        "components": [os.path.relpath(CUSTOMIZATIONS, tmp_path)],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    built = subprocess.run([str(kubectl), "kustomize", str(tmp_path)], capture_output=True, text=True, check=False)

    assert built.returncode == 0, built.stderr
    config = yaml.safe_load(built.stdout)
    assert config["metadata"] == {"name": "argocd-cm", "namespace": "argocd"}
    assert config["data"] == {
        "url": "x",
        "resource.customizations.health.kubetune.io_FineTuneJob": (HEALTH / "health.lua").read_text(),
    }


# ----------------------------------------------------------------------------- Flux, CEL


def _flux_health(checks: dict[str, str], obj: dict[str, Any]) -> str:
    """Flux's order (fluxcd/pkg runtime/cel StatusEvaluator): generation first, then
    inProgress, failed, current; none true is InProgress."""
    status = obj.get("status", {})
    if "observedGeneration" in status and status["observedGeneration"] != obj["metadata"].get("generation"):
        return "InProgress"
    env = celpy.Environment()
    activation = {key: celpy.json_to_cel(value) for key, value in obj.items()}
    for field, result in (("inProgress", "InProgress"), ("failed", "Failed"), ("current", "Current")):
        if field in checks:
            value = env.program(env.compile(checks[field])).evaluate(activation)
            if isinstance(value, Exception):
                return "Unknown"
            if value:
                return result
    return "InProgress"


@pytest.mark.parametrize("case", HEALTH_CASES, ids=_case_id)
def test_flux_health_expressions_read_each_status(case: dict[str, Any]) -> None:
    kustomization = _documents(GITOPS / "flux" / "finetunejobs.yaml")[0]
    (checks,) = kustomization["spec"]["healthCheckExprs"]
    sample = _sample(case)
    status = sample.get("status", {})
    if "phase" not in status:
        expected = {"Unknown", "InProgress"}  # no status yet: Flux polls again
    elif status.get("observedGeneration") != sample["metadata"]["generation"]:
        expected = {"InProgress"}
    else:
        expected = {"Failed" if status["phase"] == "Failed" else "Current"}

    assert (checks["apiVersion"], checks["kind"]) == ("kubetune.io/v1alpha1", "FineTuneJob")
    assert _flux_health(checks, sample) in expected


# ----------------------------------------------------------------------------- the examples


def _helm_values(tmp_path: Path, values: dict[str, Any]) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    result = template("-f", str(path))
    assert result.returncode == 0, result.stderr


def test_argocd_application_installs_the_chart(tmp_path: Path) -> None:
    operator, jobs = _documents(GITOPS / "argocd" / "application.yaml")
    source = operator["spec"]["source"]

    assert operator["kind"] == jobs["kind"] == "Application"
    assert (REPO / source["path"]).resolve() == CHART
    assert "ServerSideApply=true" in operator["spec"]["syncPolicy"]["syncOptions"]
    assert jobs["spec"]["syncPolicy"]["automated"]["prune"] is False
    _helm_values(tmp_path, source["helm"]["valuesObject"])


def test_flux_helm_release_installs_the_packaged_chart(tmp_path: Path) -> None:
    documents = {doc["kind"]: doc for doc in _documents(GITOPS / "flux" / "kubetune.yaml")}
    release, source = documents["HelmRelease"], documents["OCIRepository"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())

    assert release["apiVersion"] == "helm.toolkit.fluxcd.io/v2"
    assert release["spec"]["chartRef"] == {"kind": "OCIRepository", "name": source["metadata"]["name"]}
    assert source["metadata"]["namespace"] == release["metadata"]["namespace"]
    assert source["spec"]["url"].endswith(f"/{chart['name']}")
    assert source["spec"]["ref"]["tag"] == chart["version"]
    assert source["spec"]["layerSelector"]["mediaType"] == "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
    _helm_values(tmp_path, release["spec"]["values"])


def test_kind_cluster_has_a_worker_for_trainers_and_a_shared_cache() -> None:
    cluster = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    roles = [node["role"] for node in cluster["nodes"]]

    assert cluster["name"] == "kubetune"
    assert roles.count("control-plane") == 1 and "worker" in roles
    for node in cluster["nodes"]:
        assert {"hostPath": "./.kind-cache", "containerPath": "/var/local/kubetune-cache"} in node["extraMounts"]
    assert ".kind-cache/" in (REPO / ".gitignore").read_text()


def test_make_unit_fetches_helm_first() -> None:
    makefile = (REPO / "Makefile").read_text()

    assert any(line.startswith("unit:") and " tools " in line for line in makefile.splitlines())
    assert ".tools/" in (REPO / ".gitignore").read_text()
