from __future__ import annotations

from typing import Any

import pytest

from kubetune.api import parse_finetunejob
from kubetune.controller.admission import admission_problems, image_allowed
from kubetune.controller.settings import Settings


@pytest.mark.parametrize(
    ("image", "allowed"),
    [
        ("ghcr.io/kubetune/trainer:0.1.0", True),
        ("ghcr.io/kubetune/trainer@sha256:" + "a" * 64, True),
        ("ghcr.io/kubetune/trainer", True),
        ("ghcr.io/kubetune/trainer-evil:latest", False),
        ("registry.internal/ml/custom:v2", True),
        ("registry.internal/mlops/custom:v2", False),
        ("docker.io/library/python:3.11", False),
    ],
)
def test_image_allowlist(image: str, allowed: bool) -> None:
    assert image_allowed(image, ("ghcr.io/kubetune/trainer", "registry.internal/ml/")) is allowed


def test_jobs_asking_for_what_is_not_allowed_are_refused_by_field(job: dict[str, Any]) -> None:
    job["spec"]["resources"] = {"image": "evil.example/miner:1", "serviceAccountName": "cluster-admin"}
    settings = Settings(allowed_images=("ghcr.io/kubetune/trainer",), allowed_service_accounts=("trainer",))

    problems = admission_problems(parse_finetunejob(job).spec, settings)

    assert [p.path for p in problems] == ["spec.resources.image", "spec.resources.serviceAccountName"]
    assert "allowed: trainer" in problems[1].message


def test_a_job_cannot_widen_the_networks_its_dataset_urls_may_reach(job: dict[str, Any]) -> None:
    job["spec"]["resources"] = {
        "env": [
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "KUBETUNE_DATASET_ALLOWED_NETWORKS", "value": "0.0.0.0/0"},
        ]
    }

    problems = admission_problems(parse_finetunejob(job).spec, Settings())

    assert [p.path for p in problems] == ["spec.resources.env[1]"]
    assert "set by the installation" in problems[0].message


def test_defaults_need_no_allowlist(job: dict[str, Any]) -> None:
    assert admission_problems(parse_finetunejob(job).spec, Settings()) == []


def test_settings_read_the_allowlists_from_the_environment() -> None:
    settings = Settings.from_env({"KUBETUNE_ALLOWED_IMAGES": "a/b, c/", "KUBETUNE_ALLOWED_SERVICE_ACCOUNTS": "x"})

    assert settings.allowed_images == ("a/b", "c/")
    assert settings.allowed_service_accounts == ("x",)
