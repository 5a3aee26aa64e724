"""The preference objectives (dpo, orpo) in the API: their defaults, where a mistake is reported,
and the support-matrix rows that decide which method and strategy each runs with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kubetune.api import DataFormat, MethodType, TaskType, parse_finetunejob
from kubetune.api.enums import Objective, PreferenceLoss
from kubetune.api.tasks import objective_row, objective_rows
from kubetune.catalog import Strategy
from kubetune.manifests import Document
from kubetune.validate import validate_document

Manifest = dict[str, Any]


def _preference(job: Manifest, objective: str = "dpo", **spec: Any) -> Manifest:
    job["spec"]["objective"] = objective
    job["spec"]["dataset"].pop("format", None)  # auto: the objective's format
    job["spec"].update(spec)
    return job


def test_sft_is_the_default_and_takes_the_task_formats(job: Manifest) -> None:
    spec = parse_finetunejob(job).spec

    assert spec.objective is Objective.SFT
    assert spec.preference is None
    assert Objective.SFT.formats(TaskType.CAUSAL_LM) == TaskType.CAUSAL_LM.formats
    assert DataFormat.PREFERENCE not in TaskType.CAUSAL_LM.formats


def test_dpo_defaults_to_beta_0_1_the_sigmoid_loss_and_the_base_as_reference(job: Manifest) -> None:
    spec = parse_finetunejob(_preference(job)).spec

    assert spec.objective is Objective.DPO
    assert spec.objective.uses_reference
    assert (spec.preferences.beta, spec.preferences.loss, spec.preferences.reference) == (
        0.1,
        PreferenceLoss.SIGMOID,
        None,
    )
    assert spec.objective.formats(spec.task) == (DataFormat.PREFERENCE,)


def test_dpo_takes_its_settings_and_another_reference_model(job: Manifest) -> None:
    preference = {"beta": 0.5, "lossType": "ipo", "reference": {"pvc": {"claimName": "models", "path": "sft"}}}

    spec = parse_finetunejob(_preference(job, preference=preference)).spec

    assert spec.preferences.loss is PreferenceLoss.IPO
    assert spec.preferences.reference is not None and spec.preferences.reference.display == "models:sft"


def test_orpo_uses_no_reference(job: Manifest) -> None:
    spec = parse_finetunejob(_preference(job, "orpo")).spec

    assert spec.objective.prefers and not spec.objective.uses_reference


def _problems(job: Manifest) -> set[tuple[str, str]]:
    verdict = validate_document(Document(job, "job.yaml", 0))
    return {(p.path, p.message) for p in verdict.problems}


CASES: list[tuple[str, Callable[[Manifest], Manifest], str, str]] = [
    (
        "preference block under sft",
        lambda j: _preference(j, "sft", preference={"beta": 0.2}),
        "spec.preference",
        "objective is sft",
    ),
    (
        "preference data under sft",
        lambda j: (j["spec"]["dataset"].update(format="preference"), j)[1],
        "spec.dataset.format",
        "set objective",
    ),
    (
        "dpo on another task",
        lambda j: _preference(j, task="sequence-classification"),
        "spec.objective",
        "task sequence-classification",
    ),
    (
        "dpo with chat data",
        lambda j: (_preference(j)["spec"]["dataset"].update(format="chat"), j)[1],
        "spec.dataset.format",
        "not chat",
    ),
    (
        "dpo with packing",
        lambda j: (_preference(j)["spec"]["dataset"].update(packing=True), j)[1],
        "spec.dataset.packing",
        "packing is for sft",
    ),
    (
        "dpo scoring the prompt",
        lambda j: (_preference(j)["spec"]["dataset"].update(completionOnlyLoss=False), j)[1],
        "spec.dataset.completionOnlyLoss",
        "answers alone",
    ),
    (
        "orpo with a loss type",
        lambda j: _preference(j, "orpo", preference={"lossType": "hinge"}),
        "spec.preference.lossType",
        "orpo has one loss",
    ),
    (
        "orpo with a reference",
        lambda j: _preference(j, "orpo", preference={"reference": {"preset": "phi-3-mini-4k-instruct"}}),
        "spec.preference.reference",
        "no reference",
    ),
    (
        "unknown loss type",
        lambda j: _preference(j, preference={"lossType": "kto"}),
        "spec.preference.lossType",
        "sigmoid",
    ),
    ("beta of zero", lambda j: _preference(j, preference={"beta": 0}), "spec.preference.beta", "greater than 0"),
    (
        "dpo under fsdp",
        lambda j: _preference(j, resources={"accelerators": 2}, distributed={"strategy": "fsdp"}),
        "spec.distributed.strategy",
        "dpo x lora x fsdp is not supported",
    ),
]


@pytest.mark.parametrize(("change", "path", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_preference_mistake_is_reported_at_its_field(
    job: Manifest, change: Callable[[Manifest], Manifest], path: str, fragment: str
) -> None:
    problems = _problems(change(job))

    assert any(p == path and fragment in message for p, message in problems), problems


@pytest.mark.parametrize("method", ["lora", "qlora", "dora", "full"])
@pytest.mark.parametrize("objective", ["dpo", "orpo"])
def test_every_method_runs_each_objective_in_one_process(job: Manifest, objective: str, method: str) -> None:
    job["spec"]["method"] = {"type": method}
    job["spec"]["output"]["formats"] = ["merged"]

    assert _problems(_preference(job, objective)) == set()


@pytest.mark.parametrize(
    "distributed",
    [{"strategy": "ddp"}, *({"strategy": "deepspeed", "deepspeed": {"stage": stage}} for stage in (1, 2, 3))],
    ids=["ddp", "zero1", "zero2", "zero3"],
)
@pytest.mark.parametrize("method", ["lora", "qlora", "dora", "full"])
@pytest.mark.parametrize("objective", ["dpo", "orpo"])
def test_every_method_runs_each_objective_on_two_ranks_with_ddp_and_deepspeed(
    job: Manifest, objective: str, method: str, distributed: dict[str, Any]
) -> None:
    job["spec"]["method"] = {"type": method}
    job["spec"]["output"]["formats"] = ["merged"]

    assert _problems(_preference(job, objective, resources={"accelerators": 2}, distributed=distributed)) == set()


def test_objective_rows_cover_every_preference_objective_method_and_strategy() -> None:
    rows = objective_rows()

    assert sorted((r.objective, r.method, r.strategy) for r in rows) == sorted(
        (o, m, s) for o in Objective if o.prefers for m in MethodType for s in Strategy
    )
    assert all(r.asserts for r in rows if r.supported)
    assert all(r.reason for r in rows if not r.supported)
    assert {(r.objective, r.method) for r in rows if r.supported and r.strategy is Strategy.SINGLE} == {
        (o, m) for o in Objective if o.prefers for m in MethodType
    }
    assert objective_row(Objective.SFT, MethodType.LORA, Strategy.SINGLE) is None
