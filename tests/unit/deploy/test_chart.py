"""The Helm chart: it lints, renders objects Kubernetes accepts, runs the operator under the
restricted Pod Security Standard with exactly the RBAC it needs, installs the generated CRD,
and refuses bad values at install."""

from __future__ import annotations

import json
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kubetune.controller.settings import Settings
from tests.unit.deploy.helm import (
    CASES,
    CHART,
    NAMESPACE,
    RELEASE,
    REPO,
    Manifest,
    of_kind,
    only,
    rendered,
    run_helm,
    template,
    value_args,
)

KUBERNETES_VERSIONS = ["1.33.0", "1.37.0"]
# Kinds from CRDs that kubernetes-validate has no schema for.
NOT_BUILT_IN = {"ServiceMonitor"}
CRD_FILE = REPO / "crds" / "kubetune.io_finetunejobs.yaml"

# The operator's settings (kubetune.controller.settings), all of them, and nothing else.
CONTRACT_ENV = {
    "KUBETUNE_TRAINER_IMAGE",
    "KUBETUNE_TRAINER_CPU_IMAGE",
    "KUBETUNE_NAMESPACES",
    "KUBETUNE_ALLOWED_IMAGES",
    "KUBETUNE_ALLOWED_SERVICE_ACCOUNTS",
    "KUBETUNE_DATASET_ALLOWED_NETWORKS",
    "KUBETUNE_ACCELERATOR_PROFILES",
    "KUBETUNE_PROGRESS_PORT",
    "KUBETUNE_PROGRESS_INTERVAL",
    "KUBETUNE_KEPT_FAILED_ATTEMPTS",
    "KUBETUNE_DEFAULT_CPU",
    "KUBETUNE_DEFAULT_MEMORY",
    "KUBETUNE_MODEL_CACHE_PVC",
    "KUBETUNE_DEFAULT_QUEUE",
    "KUBETUNE_LOG_LEVEL",
    "KUBETUNE_LOG_FORMAT",
    "KUBETUNE_METRICS_PORT",
    "KUBETUNE_HEALTH_PORT",
}

# The API calls the operator makes: (API group, resource) -> verbs. tests/integration/test_rbac.py
# records them from a whole job lifecycle against the emulated API server.
NAMESPACED_RULES = {
    ("kubetune.io", "finetunejobs"): {"get", "list", "watch", "patch"},
    ("kubetune.io", "finetunejobs/status"): {"patch"},
    ("", "configmaps"): {"create", "delete"},
    ("", "services"): {"create", "delete"},
    ("batch", "jobs"): {"list", "watch", "create", "delete", "patch"},
    ("", "pods"): {"list", "watch"},
    ("", "events"): {"create"},
    ("kueue.x-k8s.io", "workloads"): {"list", "patch"},
}
CRD_RULES = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
CLUSTER_WIDE_RULES = {("", "namespaces"): {"list", "watch"}}

# Volume types the restricted Pod Security Standard allows.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def _pod_specs(objects: list[Manifest]) -> list[Manifest]:
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] in {"Deployment", "StatefulSet", "DaemonSet"}]


def _operator(objects: list[Manifest]) -> Manifest:
    return only(objects, "Deployment")


def _container(objects: list[Manifest]) -> Manifest:
    containers = _operator(objects)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


def _env(objects: list[Manifest]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in _container(objects)["env"]}


def _rules(role: Manifest) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role.get("rules", []):
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


# ----------------------------------------------------------------------------- helm itself


@pytest.mark.parametrize("case", CASES)
def test_helm_lint_strict_passes(case: str) -> None:
    files, sets = CASES[case]
    result = run_helm("lint", "--strict", str(CHART), *value_args(files, sets))

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("case", CASES)
def test_install_notes_render(case: str) -> None:
    files, sets = CASES[case]
    result = run_helm(
        "install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE, *value_args(files, sets)
    )

    assert result.returncode == 0, result.stderr
    assert "kubectl get finetunejobs" in result.stdout.split("NOTES:")[1]


def test_chart_app_version_is_the_project_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == project["version"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_objects_pass_strict_kubernetes_validation(case: str, version: str) -> None:
    for obj in rendered(case):
        if obj["kind"] in NOT_BUILT_IN:
            continue
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("case", CASES)
def test_namespaced_objects_name_their_namespace(case: str) -> None:
    cluster_scoped = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for obj in rendered(case):
        assert ("namespace" in obj["metadata"]) == (obj["kind"] not in cluster_scoped), obj["metadata"]


# ----------------------------------------------------------------------------- the CRD


def test_chart_installs_the_generated_crd_unchanged() -> None:
    crd = only(rendered("default"), "CustomResourceDefinition")
    generated = yaml.safe_load(CRD_FILE.read_text())

    assert {k: v for k, v in crd.items() if k != "metadata"} == {k: v for k, v in generated.items() if k != "metadata"}
    assert crd["metadata"]["name"] == generated["metadata"]["name"]
    # Kept on uninstall, by Helm and by Argo CD: deleting the CRD deletes every FineTuneJob.
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["annotations"]["argocd.argoproj.io/sync-options"] == "Delete=false"


def test_chart_reads_the_crd_through_a_link_not_a_copy() -> None:
    linked = CHART / "files" / "kubetune.io_finetunejobs.yaml"

    assert linked.is_symlink(), "a copy of the CRD in the chart would drift from crds/"
    assert linked.resolve() == CRD_FILE.resolve()
    # Helm installs a chart's crds/ folder once and never upgrades it: the CRD is a template.
    assert not (CHART / "crds").exists()


def test_packaged_chart_carries_the_crd_itself(tmp_path: Path) -> None:
    """What gets published (helm package, then helm push) holds the file, not the link."""
    result = run_helm("package", str(CHART), "--destination", str(tmp_path))
    assert result.returncode == 0, result.stderr
    (package,) = tmp_path.glob("kubetune-*.tgz")

    with tarfile.open(package) as archive:
        member = archive.getmember("kubetune/files/kubetune.io_finetunejobs.yaml")
        assert member.isfile()
        assert archive.extractfile(member).read() == CRD_FILE.read_bytes()  # type: ignore[union-attr]
        assert not [name for name in archive.getnames() if "/ci/" in name]


def test_crd_can_be_left_to_another_release() -> None:
    assert not of_kind(rendered("full"), "CustomResourceDefinition")


# ----------------------------------------------------------------------------- the operator's pod


@pytest.mark.parametrize("case", CASES)
def test_operator_runs_one_replica_recreated(case: str) -> None:
    deployment = _operator(rendered(case))

    assert deployment["spec"]["replicas"] in (0, 1)
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not of_kind(rendered(case), "PodDisruptionBudget")


@pytest.mark.parametrize("case", CASES)
def test_pods_meet_the_restricted_pod_security_standard(case: str) -> None:
    specs = _pod_specs(rendered(case))
    assert specs
    for spec in specs:
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(host, False), host
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True
        assert pod_security.get("runAsUser", 1) != 0
        assert pod_security["seccompProfile"]["type"] == "RuntimeDefault"
        assert "sysctls" not in pod_security
        for volume in spec.get("volumes", []):
            assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, volume
        for container in spec["containers"] + spec.get("initContainers", []):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security.get("privileged", False) is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert not set(security["capabilities"].get("add", [])) - {"NET_BIND_SERVICE"}
            assert security.get("runAsUser", 1) != 0
            assert security.get("seccompProfile", {"type": "RuntimeDefault"})["type"] == "RuntimeDefault"
            assert security["readOnlyRootFilesystem"] is True
            assert all("hostPort" not in port for port in container.get("ports", []))


@pytest.mark.parametrize("case", CASES)
def test_operator_probes_its_health_port(case: str) -> None:
    objects = rendered(case)
    container = _container(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = _env(objects)

    assert container["command"] == ["kubetune", "operator"]
    assert ports == {"metrics": int(env["KUBETUNE_METRICS_PORT"]), "health": int(env["KUBETUNE_HEALTH_PORT"])}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["limits"]["memory"]


@pytest.mark.parametrize("case", CASES)
def test_operator_gets_exactly_the_contract_settings(case: str) -> None:
    assert set(_env(rendered(case))) == CONTRACT_ENV


def test_default_settings_reach_the_operator() -> None:
    settings = Settings.from_env(_env(rendered("default")))

    assert settings.namespaces == ()
    assert settings.trainer_image == "ghcr.io/kubetune/trainer:0.1.0"
    assert settings.trainer_cpu_image == "ghcr.io/kubetune/trainer:0.1.0-cpu"
    assert settings.progress_port == 9090
    assert settings.kept_failed_attempts == Settings().kept_failed_attempts
    assert settings.allowed_images == () and settings.allowed_service_accounts == ()
    assert settings.dataset_allowed_networks == ()


def test_every_value_reaches_the_operator() -> None:
    objects = rendered("full")
    env = _env(objects)
    settings = Settings.from_env(env)
    values = yaml.safe_load((CHART / "ci" / "full-values.yaml").read_text())

    assert settings.namespaces == ("ml-team-a",)
    assert settings.trainer_image == "registry.example.com/ml/trainer:0.1.0-cu13"
    assert settings.trainer_cpu_image == "registry.example.com/ml/trainer:0.1.0-cpu"
    assert settings.allowed_images == ("registry.example.com/ml/",)
    assert settings.allowed_service_accounts == ("trainer-s3",)
    assert [str(n) for n in settings.dataset_allowed_networks] == values["trainer"]["allowedDatasetNetworks"]
    assert json.loads(env["KUBETUNE_ACCELERATOR_PROFILES"]) == values["acceleratorProfiles"]
    assert [p.name for p in settings.accelerator_profiles] == ["a100-80gb", "l4"]
    assert settings.progress_port == 9191
    assert settings.progress_interval_seconds == 2.5
    assert settings.kept_failed_attempts == 5
    assert (settings.default_cpu, settings.default_memory) == ("8", "32Gi")
    assert (env["KUBETUNE_MODEL_CACHE_PVC"], env["KUBETUNE_DEFAULT_QUEUE"]) == ("model-cache", "team-a-queue")
    assert (env["KUBETUNE_LOG_LEVEL"], env["KUBETUNE_LOG_FORMAT"]) == ("debug", "text")
    assert (env["KUBETUNE_METRICS_PORT"], env["KUBETUNE_HEALTH_PORT"]) == ("9080", "9081")

    pod = _operator(objects)["spec"]["template"]["spec"]
    assert _container(objects)["image"] == f"{values['image']['repository']}@{values['image']['digest']}"
    assert pod["serviceAccountName"] == "kubetune-operator"
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["tolerations"] == values["tolerations"]
    assert pod["affinity"] == values["affinity"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert _container(objects)["resources"] == values["resources"]


def test_operator_image_defaults_to_the_app_version() -> None:
    assert _container(rendered("default"))["image"] == "ghcr.io/kubetune/operator:0.1.0"


# ----------------------------------------------------------------------------- RBAC


def test_cluster_wide_mode_grants_exactly_the_operators_calls() -> None:
    objects = rendered("default")

    assert _rules(only(objects, "ClusterRole")) == NAMESPACED_RULES | CRD_RULES | CLUSTER_WIDE_RULES
    assert not of_kind(objects, "Role")


def test_namespaced_mode_grants_a_role_per_watched_namespace() -> None:
    objects = rendered("namespaced")
    roles = of_kind(objects, "Role")

    assert _rules(only(objects, "ClusterRole")) == CRD_RULES
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml-team-a", "ml-team-b"]
    for role in roles:
        assert _rules(role) == NAMESPACED_RULES
    assert _env(objects)["KUBETUNE_NAMESPACES"] == "ml-team-a,ml-team-b"


@pytest.mark.parametrize("case", CASES)
def test_bindings_give_the_roles_to_the_operators_service_account(case: str) -> None:
    objects = rendered(case)
    account = _operator(objects)["spec"]["template"]["spec"]["serviceAccountName"]
    roles = {(r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"]) for r in objects if "rules" in r}
    bindings = of_kind(objects, "ClusterRoleBinding") + of_kind(objects, "RoleBinding")

    assert len(bindings) == len(roles)
    assert only(objects, "ServiceAccount")["metadata"]["name"] == account
    for binding in bindings:
        ref = binding["roleRef"]
        assert (ref["kind"], binding["metadata"].get("namespace"), ref["name"]) in roles
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]


@pytest.mark.parametrize("case", CASES)
def test_rbac_has_no_wildcards_and_no_secrets(case: str) -> None:
    for role in rendered(case):
        for rule in role.get("rules", []):
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], rule
            assert not {"secrets", "serviceaccounts/token", "pods/exec"} & set(rule["resources"]), rule
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule


# ----------------------------------------------------------------------------- metrics


def test_metrics_service_selects_the_operator() -> None:
    objects = rendered("default")
    service = only(objects, "Service")
    labels = _operator(objects)["spec"]["template"]["metadata"]["labels"]

    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]
    assert not of_kind(objects, "ServiceMonitor")


def test_service_monitor_scrapes_the_metrics_service() -> None:
    objects = rendered("servicemonitor")
    monitor = only(objects, "ServiceMonitor")
    service = only(objects, "Service")

    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]


# ----------------------------------------------------------------------------- values and the schema


@pytest.mark.parametrize(
    ("flag", "cited"),
    [
        ("replicaCount=two", "/replicaCount"),
        ("replicaCount=2", "/replicaCount"),
        ("replicaCont=1", "replicaCont"),
        ("trainer.progresInterval=5", "progresInterval"),
        ("logFormat=yaml", "/logFormat"),
        ("trainer.defaultResources.memory=lots", "/trainer/defaultResources/memory"),
        ("watchNamespaces[0]=Not_A_Namespace", "/watchNamespaces/0"),
        ("acceleratorProfiles[0].name=a100", "/acceleratorProfiles/0"),
        ("trainer.allowedDatasetNetworks[0]=minio.storage.svc", "/trainer/allowedDatasetNetworks/0"),
    ],
)
def test_bad_values_fail_at_install_citing_the_value(flag: str, cited: str) -> None:
    result = template("--set", flag)

    assert result.returncode != 0
    assert cited in result.stderr, result.stderr


def test_helm_lint_fails_on_a_bad_value() -> None:
    result = run_helm("lint", str(CHART), "--set", "replicaCount=two")

    assert result.returncode != 0
    assert "/replicaCount" in result.stdout + result.stderr


def test_network_policy_without_namespaces_fails_with_what_to_do() -> None:
    result = template("--set", "networkPolicy.enabled=true")

    assert result.returncode != 0
    assert "networkPolicy.namespaces" in result.stderr


def _schema_keys_match_values(schema: dict[str, Any], values: Any, path: str) -> None:
    properties = schema.get("properties")
    if not properties or not isinstance(values, dict):
        return
    assert set(values) == set(properties) - {"global"}, f"{path or 'values'}: schema and values.yaml differ"
    for key, value in values.items():
        _schema_keys_match_values(properties[key], value, f"{path}.{key}")


def test_schema_and_values_name_the_same_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    _schema_keys_match_values(schema, values, "")
