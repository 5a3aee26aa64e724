"""Paths and names that the trainer joins onto its mount folders cannot leave them: a '..'
segment in a claim path or a bucket prefix, and a claim, ConfigMap or Secret name or key
that is not a Kubernetes one, are refused by the CRD (API server) and by the models
(operator, `kubetune run`), each at its field path."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from kubetune.api import InvalidSpec, parse_finetunejob
from kubetune.api.base import ESCAPE_RULE
from kubetune.crd import Schema
from kubetune.crdcheck import crd_problems, crd_root_schema

Manifest = dict[str, Any]

# Every place a manifest names a path on a claim, with the block that holds it.
CLAIM_PATHS: dict[str, Manifest] = {
    "spec.model.pvc": {"model": {"pvc": {"claimName": "models", "path": "phi3"}}},
    "spec.dataset.pvc": {"dataset": {"pvc": {"claimName": "data", "path": "train.jsonl"}}},
    "spec.dataset.evaluation.source.pvc": {
        "dataset": {
            "huggingFace": {"name": "tatsu-lab/alpaca"},
            "evaluation": {"source": {"pvc": {"claimName": "data", "path": "eval.jsonl"}}},
        }
    },
    "spec.training.warmStart.pvc": {"training": {"warmStart": {"pvc": {"claimName": "adapters", "path": "v1"}}}},
    "spec.checkpoint.location.pvc": {"checkpoint": {"location": {"pvc": {"claimName": "ckpt", "path": "demo"}}}},
    "spec.output.pvc": {"output": {"pvc": {"claimName": "results", "path": "demo"}}},
    "spec.preference.reference.pvc": {
        "objective": "dpo",
        "dataset": {"pvc": {"claimName": "data", "path": "pairs.jsonl"}},
        "preference": {"reference": {"pvc": {"claimName": "models", "path": "sft"}}},
    },
}

ESCAPES = ["..", "../x", "../../x", "a/../../b", "a/..", "/../etc", "models/../../"]
INSIDE = ["demo", "/", "/ckpt", "a/b/c", "./a", "a..b", "...", ".hidden", "a//b"]


def _at(body: Manifest, dotted: str) -> Manifest:
    node = body
    for part in dotted.split("."):
        node = node[part]
    return node


def _claim_job(job: Manifest, where: str, path: str) -> Manifest:
    body = copy.deepcopy(job)
    body["spec"].update(copy.deepcopy(CLAIM_PATHS[where]))
    _at(body, where)["path"] = path
    return body


def _model_problems(body: Manifest) -> list[str]:
    try:
        parse_finetunejob(body)
    except InvalidSpec as error:
        return [str(p) for p in error.problems]
    return []


@pytest.mark.parametrize("where", CLAIM_PATHS)
@pytest.mark.parametrize("path", ESCAPES)
def test_a_parent_segment_in_a_claim_path_is_refused_by_the_crd(job: Manifest, where: str, path: str) -> None:
    problems = crd_problems(_claim_job(job, where, path))

    assert [(p.path, p.message) for p in problems] == [
        (f"{where}.path", "must not contain a '..' segment: the path stays inside its volume or bucket")
    ]


@pytest.mark.parametrize("where", CLAIM_PATHS)
@pytest.mark.parametrize("path", ESCAPES)
def test_a_parent_segment_in_a_claim_path_is_refused_by_the_models(job: Manifest, where: str, path: str) -> None:
    assert _model_problems(_claim_job(job, where, path)) == [
        f"{where}.path: {path!r} must not contain a '..' segment: the path stays inside its volume or bucket"
    ]


@pytest.mark.parametrize("where", CLAIM_PATHS)
@pytest.mark.parametrize("path", INSIDE)
def test_paths_inside_the_volume_pass_both(job: Manifest, where: str, path: str) -> None:
    body = _claim_job(job, where, path)

    assert crd_problems(body) == []
    assert _model_problems(body) == []


def _claim_paths_in(schema: Schema, where: str = "") -> Iterator[tuple[str, Schema]]:
    properties = schema.get("properties", {})
    if {"claimName", "path"} <= properties.keys():
        yield where, properties["path"]
    for name, sub in properties.items():
        yield from _claim_paths_in(sub, f"{where}.{name}" if where else name)
    if "items" in schema:
        yield from _claim_paths_in(schema["items"], f"{where}[]")


def test_every_claim_path_of_the_crd_carries_the_rule_and_is_tested_above() -> None:
    found = dict(_claim_paths_in(crd_root_schema()))

    assert set(found) == set(CLAIM_PATHS)
    assert all(
        ESCAPE_RULE in [rule["rule"] for rule in schema.get("x-kubernetes-validations", [])]
        for schema in found.values()
    )


# Names and keys the trainer uses as folder and file names under its mounts.
NAMED = [
    ("spec.model.pvc.claimName", {"model": {"pvc": {"claimName": "NAME", "path": "phi3"}}}),
    ("spec.dataset.configMap.name", {"dataset": {"configMap": {"name": "NAME", "key": "train.jsonl"}}}),
    ("spec.dataset.configMap.key", {"dataset": {"configMap": {"name": "data", "key": "NAME"}}}),
    (
        "spec.model.hubTokenSecret.name",
        {"model": {"preset": "phi-3-mini-4k-instruct", "hubTokenSecret": {"name": "NAME"}}},
    ),
    (
        "spec.model.hubTokenSecret.key",
        {"model": {"preset": "phi-3-mini-4k-instruct", "hubTokenSecret": {"name": "hub", "key": "NAME"}}},
    ),
    (
        "spec.output.s3.credentialsSecret.name",
        {"output": {"s3": {"uri": "s3://results/demo", "credentialsSecret": {"name": "NAME"}}}},
    ),
]


def _named_job(job: Manifest, block: Manifest, value: str) -> Manifest:
    body = copy.deepcopy(job)
    for key, sub in block.items():
        body["spec"][key] = _replaced(sub, value)
    return body


def _replaced(node: Any, value: str) -> Any:
    if isinstance(node, dict):
        return {k: _replaced(v, value) for k, v in node.items()}
    return value if node == "NAME" else node


@pytest.mark.parametrize(("where", "block"), NAMED, ids=[n[0] for n in NAMED])
@pytest.mark.parametrize("value", ["..", "../../etc", "a/b"])
def test_names_and_keys_that_would_leave_their_folder_are_refused(
    job: Manifest, where: str, block: Manifest, value: str
) -> None:
    body = _named_job(job, block, value)

    assert [p.path for p in crd_problems(body)] == [where]
    problems = _model_problems(body)
    assert len(problems) == 1 and problems[0].startswith(f"{where}: {value!r} is not a "), problems


@pytest.mark.parametrize(("where", "block"), NAMED, ids=[n[0] for n in NAMED])
def test_kubernetes_names_and_keys_pass(job: Manifest, where: str, block: Manifest) -> None:
    value = ".train.jsonl" if where.endswith(".key") else "team-a.data"
    body = _named_job(job, block, value)

    assert crd_problems(body) == []
    assert _model_problems(body) == []


@pytest.mark.parametrize(
    ("where", "block"),
    [
        ("spec.dataset.s3.uri", {"dataset": {"s3": {"uri": "s3://data/team/../../../etc"}}}),
        ("spec.output.s3.uri", {"output": {"s3": {"uri": "s3://results/.."}}}),
        ("spec.dataset.huggingFace.name", {"dataset": {"huggingFace": {"name": "../.."}}}),
        ("spec.model.huggingFace.repo", {"model": {"huggingFace": {"repo": "owner/.."}}}),
    ],
)
def test_bucket_prefixes_and_hub_ids_with_a_parent_segment_are_refused(
    job: Manifest, where: str, block: Manifest
) -> None:
    body = copy.deepcopy(job)
    body["spec"].update(block)

    assert [p.path for p in crd_problems(body)] == [where]
    assert [p.split(":")[0] for p in _model_problems(body)] == [where]
