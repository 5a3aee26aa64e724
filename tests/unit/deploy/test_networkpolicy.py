"""The chart's NetworkPolicy for trainer pods, evaluated against the pods the operator really
builds: trainers of a job reach each other on every port (rendezvous, then NCCL/Gloo on
ports they pick), the operator reaches the progress port, nobody else gets in."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api import parse_finetunejob
from kubetune.controller.builders import Context, build_preflight_job, build_training_job
from kubetune.controller.settings import RENDEZVOUS_PORT, Settings
from tests.unit.deploy.helm import NAMESPACE, Manifest, of_kind, only, rendered

JOB_NAMESPACE = "ml-team-a"
Labels = dict[str, str]


def _selects(selector: Manifest, labels: Labels) -> bool:
    """A Kubernetes label selector (matchLabels, and matchExpressions' four operators)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if not {
            "Exists": present,
            "DoesNotExist": not present,
            "In": present and labels[key] in values,
            "NotIn": not present or labels[key] not in values,
        }[operator]:
            return False
    return True


def _peer_admits(peer: Manifest, pod: Labels, namespace: str, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        return False
    namespace_labels = {"kubernetes.io/metadata.name": namespace}
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], namespace_labels):
            return False
    elif namespace != policy_namespace:
        return False
    return _selects(peer.get("podSelector", {}), pod)


def _admits(policy: Manifest, pod: Labels, namespace: str, port: int) -> bool:
    """Whether the policy lets a pod with these labels, in this namespace, reach the port."""
    for rule in policy["spec"].get("ingress", []):
        ports = rule.get("ports")
        if ports is not None and not any(p.get("port") == port for p in ports):
            continue
        peers = rule.get("from")
        if peers is None or any(_peer_admits(peer, pod, namespace, policy["metadata"]["namespace"]) for peer in peers):
            return True
    return False


def _pod_labels(job: Manifest) -> Labels:
    return job["spec"]["template"]["metadata"]["labels"]  # type: ignore[no-any-return]


@pytest.fixture
def trainers(job: dict[str, Any]) -> tuple[Manifest, Manifest]:
    """A two-node training Job and its preflight, as the operator builds them."""
    job["metadata"]["namespace"] = JOB_NAMESPACE
    job["spec"]["resources"] = {"nodes": 2, "accelerators": 1}
    job["spec"]["output"] = {"s3": {"uri": "s3://models/demo"}}
    context = Context(parse_finetunejob(job), Settings())
    return build_training_job(context, attempt=1), build_preflight_job(context)


def _policy(case: str = "networkpolicy") -> Manifest:
    return only(rendered(case), "NetworkPolicy")


def _operator_labels(case: str = "networkpolicy") -> Labels:
    return only(rendered(case), "Deployment")["spec"]["template"]["metadata"]["labels"]  # type: ignore[no-any-return]


def test_policy_is_off_by_default() -> None:
    assert not of_kind(rendered("default"), "NetworkPolicy")


def test_policy_selects_trainer_pods_and_not_the_operator(trainers: tuple[Manifest, Manifest]) -> None:
    policy = _policy()

    assert policy["metadata"]["namespace"] == JOB_NAMESPACE
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for job in trainers:
        assert _selects(policy["spec"]["podSelector"], _pod_labels(job))
    assert not _selects(policy["spec"]["podSelector"], _operator_labels())


@pytest.mark.parametrize("port", [RENDEZVOUS_PORT, 9090, 41234])
def test_trainers_of_a_job_reach_each_other_on_every_port(trainers: tuple[Manifest, Manifest], port: int) -> None:
    training, _ = trainers

    assert _admits(_policy(), _pod_labels(training), JOB_NAMESPACE, port)


def test_operator_reaches_the_progress_port_only(trainers: tuple[Manifest, Manifest]) -> None:
    training, _ = trainers
    container = training["spec"]["template"]["spec"]["containers"][0]
    progress = {p["name"]: p["containerPort"] for p in container["ports"]}["progress"]

    assert _admits(_policy(), _operator_labels(), NAMESPACE, progress)
    assert not _admits(_policy(), _operator_labels(), NAMESPACE, RENDEZVOUS_PORT)
    # The operator's labels, from any other namespace, do not pass.
    assert not _admits(_policy(), _operator_labels(), "intruders", progress)


def test_other_pods_stay_out(trainers: tuple[Manifest, Manifest]) -> None:
    training, _ = trainers
    stranger = {"app": "notebook"}
    elsewhere = _pod_labels(training)

    for port in (9090, RENDEZVOUS_PORT):
        assert not _admits(_policy(), stranger, JOB_NAMESPACE, port)
        assert not _admits(_policy(), elsewhere, "other-team", port)


def test_extra_peers_reach_the_progress_port_only() -> None:
    prometheus = {"app.kubernetes.io/name": "prometheus"}

    assert _admits(_policy(), prometheus, "monitoring", 9090)
    assert not _admits(_policy(), prometheus, "monitoring", RENDEZVOUS_PORT)


def test_progress_port_follows_the_setting() -> None:
    policy = only(rendered("full"), "NetworkPolicy")

    assert _admits(policy, _operator_labels("full"), NAMESPACE, 9191)
    assert not _admits(policy, _operator_labels("full"), NAMESPACE, 9090)


def test_namespaced_mode_puts_a_policy_in_each_watched_namespace() -> None:
    policies = of_kind(rendered("namespaced-networkpolicy"), "NetworkPolicy")

    assert sorted(p["metadata"]["namespace"] for p in policies) == ["ml-team-a", "ml-team-b"]
