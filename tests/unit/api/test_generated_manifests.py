"""Property-based: generated FineTuneJob manifests, valid and invalid, through the two gates
a manifest meets (the API server's CRD schema and CEL rules, then the models' rules in the
operator). Each one either becomes children that Kubernetes accepts (kubernetes-validate,
strict) or problems that each name a field path; nothing raises anything else.
KUBETUNE_FUZZ_EXAMPLES raises the count (the default keeps the suite quick)."""

from __future__ import annotations

import copy
import os
from typing import Any

import kubernetes_validate
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetune.api import InvalidSpec, parse_finetunejob
from kubetune.controller.builders import Context, NotBuildable, build_children
from kubetune.controller.reconcile import effective_job
from kubetune.controller.settings import AcceleratorProfile, Settings
from kubetune.crdcheck import crd_problems

from ...conftest import MINIMAL_JOB

KUBERNETES = "1.33.0"
SETTINGS = Settings(accelerator_profiles=(AcceleratorProfile("a100", "nvidia.com/gpu", 80, 8),))

# Values each field may take: sensible ones, edge ones and wrong ones (types, ranges, names).
ANYTHING = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.text(max_size=12), st.just([]), st.just({}))
FIELDS: dict[tuple[str, ...], st.SearchStrategy[Any]] = {
    ("model",): st.sampled_from(
        [
            {"preset": "phi-3-mini-4k-instruct"},
            {"preset": "no-such-model"},
            {"huggingFace": {"repo": "org/model", "revision": "main"}},
            {"pvc": {"claimName": "models", "path": "tiny"}},
            {"preset": "phi-3-mini-4k-instruct", "pvc": {"claimName": "models", "path": "x"}},
            {"pvc": {"claimName": "Bad_Name", "path": "x"}},
            {},
        ]
    ),
    ("method",): st.sampled_from(
        [
            {"type": "lora"},
            {"type": "qlora"},
            {"type": "dora", "lora": {"r": 8}},
            {"type": "full"},
            {"type": "full", "lora": {"r": 4}},
            {"type": "lora", "lora": {"r": 0}},
            {"type": "lora", "lora": {"targetModules": ["all-linear"]}},
            {"type": "qlora", "quantization": {"quantType": "fp4", "doubleQuant": False}},
            {"type": "sgd"},
        ]
    ),
    ("dataset", "format"): st.sampled_from(["auto", "chat", "instruction", "prompt-completion", "text", "xml"]),
    ("dataset", "maxSeqLength"): st.one_of(st.integers(-1, 300000), ANYTHING),
    ("dataset", "packing"): st.one_of(st.booleans(), ANYTHING),
    ("dataset", "preflight"): st.booleans(),
    ("training",): st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "epochs": st.one_of(st.floats(-1, 100, allow_nan=False), ANYTHING),
                "maxSteps": st.integers(-3, 10**7),
                "learningRate": st.floats(-1, 1, allow_nan=False),
                "perDeviceBatchSize": st.integers(-1, 4096),
                "gradientAccumulationSteps": st.integers(-1, 1024),
            },
        ),
        ANYTHING,
    ),
    ("distributed",): st.sampled_from(
        [
            {"strategy": "auto"},
            {"strategy": "none"},
            {"strategy": "ddp"},
            {"strategy": "deepspeed", "deepspeed": {"stage": 3, "offloadParameters": True}},
            {"strategy": "deepspeed", "deepspeed": {"stage": 1, "offloadParameters": True}},
            {"strategy": "fsdp"},
            {"strategy": "ddp", "fsdp": {}},
            {"strategy": "horovod"},
        ]
    ),
    ("resources",): st.fixed_dictionaries(
        {},
        optional={
            "nodes": st.integers(-1, 2000),
            "accelerators": st.one_of(st.integers(-1, 100), st.just("auto"), st.just("many")),
            "cpu": st.sampled_from(["4", "500m", "lots", 3]),
            "memory": st.sampled_from(["16Gi", "1e3", "-1Gi", "big"]),
            "sharedMemory": st.sampled_from(["8Gi", "64Mi", "x"]),
            "nodeSelector": st.dictionaries(
                st.sampled_from(["gpu", "zone", "bad key!"]), st.text(max_size=8), max_size=2
            ),
            "tolerations": st.sampled_from([[], [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]]),
            "image": st.sampled_from(["ghcr.io/kubetune/trainer:1", "", "x" * 2000]),
            "serviceAccountName": st.sampled_from(["trainer", "Not_Valid"]),
        },
    ),
    ("output",): st.sampled_from(
        [
            {"pvc": {"claimName": "results", "path": "demo"}},
            {"pvc": {"claimName": "results", "path": "demo"}, "formats": ["adapter", "merged"]},
            {"pvc": {"claimName": "results", "path": "demo"}, "formats": ["adapter", "adapter"]},
            {"s3": {"uri": "s3://bucket/prefix", "credentialsSecret": "s3"}},
            {"s3": {"uri": "http://not-s3"}},
            {},
        ]
    ),
    ("maxRetries",): st.one_of(st.integers(-1, 200), ANYTHING),
    ("activeDeadlineSeconds",): st.one_of(st.integers(-1, 10**6), ANYTHING),
    ("queueName",): st.sampled_from(["team-a", "", "q" * 70]),
    ("surprise",): ANYTHING,
}


@st.composite
def manifests(draw: st.DrawFn) -> dict[str, Any]:
    body = copy.deepcopy(MINIMAL_JOB)
    chosen = draw(st.lists(st.sampled_from(sorted(FIELDS)), unique=True, max_size=6))
    for path in chosen:
        node = body["spec"]
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = draw(FIELDS[path])
    if draw(st.booleans()):
        body["metadata"]["name"] = draw(st.sampled_from(["demo", "x" * 120, "9starts-with-digit", "Bad_Name"]))
    return body


EXAMPLES = int(os.environ.get("KUBETUNE_FUZZ_EXAMPLES", "300"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests())
def test_every_manifest_becomes_valid_children_or_problems_by_field(body: dict[str, Any]) -> None:
    refused = crd_problems(body)
    if refused:
        assert all(problem.path for problem in refused), refused
        return
    try:
        job = parse_finetunejob(body)
    except InvalidSpec as error:
        assert error.problems
        for problem in error.problems:
            assert problem.path, f"a problem without a field path: {problem}"
        return
    try:
        sized, _ = effective_job(job, SETTINGS)
    except NotBuildable as error:
        assert "fits none of the accelerator profiles" in str(error)
        return
    for child in build_children(Context(sized, SETTINGS)):
        kubernetes_validate.validate(child, KUBERNETES, strict=True)


def test_a_null_field_counts_as_unset_as_on_the_api_server(job: dict[str, Any]) -> None:
    job["spec"]["activeDeadlineSeconds"] = None
    job["spec"]["resources"] = {"nodeSelector": None}

    assert crd_problems(job) == []


@pytest.mark.parametrize("body", [None, [], "a string", {"spec": None}, {"spec": {"model": 5}}])
def test_shapes_that_are_not_a_job_are_refused_with_a_reason(body: Any) -> None:
    with pytest.raises(InvalidSpec) as refused:
        parse_finetunejob(body)

    assert refused.value.problems and all(str(p) for p in refused.value.problems)
