"""`accelerators: auto` for a model that is not a preset: the preflight reads its config.json,
the operator keeps what it read in the status and sizes the training Job from it, never
before."""

from __future__ import annotations

import json
from typing import Any

from kubetune.api import FineTuneJobStatus
from kubetune.contract import RunSummary
from kubetune.controller.observe import JobState, PodState
from kubetune.controller.reconcile import Attempt, Create, Delete, Snapshot, WriteStatus, plan
from kubetune.controller.settings import AcceleratorProfile, Settings
from kubetune.estimate import read_model_facts

from .test_reconcile import NOW, _body, _kinds, _status

PHI3_MINI = {
    "model_type": "phi3",
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32064,
}
FACTS = read_model_facts(PHI3_MINI)
PROFILES = Settings(
    accelerator_profiles=(
        AcceleratorProfile("l4", "nvidia.com/gpu", 24, 4, {"gpu": "l4"}),
        AcceleratorProfile("a100", "nvidia.com/gpu", 80, 8, {"gpu": "a100"}),
    )
)


def _auto_hub_job(job: dict[str, Any]) -> dict[str, Any]:
    job["spec"]["model"] = {"huggingFace": {"repo": "microsoft/Phi-3-mini-128k-instruct"}}
    job["spec"]["resources"] = {"accelerators": "auto"}
    return job


def _preflight(complete: bool, summary: dict[str, Any] | None = None) -> Attempt:
    pod = PodState(
        name="demo-preflight-0",
        index=0,
        phase="Succeeded" if complete else "Running",
        exit_code=0 if complete else None,
        summary=RunSummary.from_json(summary or {}),
        raw_message=json.dumps(summary or {}),
    )
    return Attempt(JobState(name="demo-preflight", attempt=0, suspended=False, complete=complete), (pod,))


def _passed_with_facts() -> Attempt:
    reported = {
        "status": "Succeeded",
        "reason": "DataValid",
        "modelFacts": FACTS.model_dump(mode="json", by_alias=True),
    }
    return _preflight(True, reported)


def _training_job(actions: list[Any]) -> dict[str, Any]:
    return next(a.manifest for a in actions if isinstance(a, Create) and a.manifest["metadata"]["name"] == "demo-a1")


def test_the_preflight_of_an_unsized_job_runs_first_and_no_accelerator_is_asked_for(job: dict[str, Any]) -> None:
    actions = plan(_body(_auto_hub_job(job)), Snapshot(), PROFILES, NOW)

    assert _kinds(actions) == [
        "status Pending attempts=0 preemptions=0",
        "create ConfigMap demo-spec",
        "create Service demo",
        "create Job demo-preflight",
        "event Preflight",
    ]
    running = plan(_body(_auto_hub_job(job), _status(actions)), Snapshot(preflight=_preflight(False)), PROFILES, NOW)
    assert not [a for a in running if isinstance(a, Create)]


def test_the_training_job_is_sized_from_the_facts_the_preflight_reported_and_they_are_kept(
    job: dict[str, Any],
) -> None:
    status = FineTuneJobStatus(start_time=NOW)

    actions = plan(_body(_auto_hub_job(job), status), Snapshot(preflight=_passed_with_facts()), PROFILES, NOW)

    # The ConfigMap the preflight read holds the unsized spec: it goes before the count is written.
    assert _kinds(actions)[:5] == [
        "delete ConfigMap demo-spec",
        "status Pending attempts=1 preemptions=0",
        "create ConfigMap demo-spec",
        "create Service demo",
        "create Job demo-a1",
    ]
    written = next(a.status for a in actions if isinstance(a, WriteStatus))
    assert written.model_facts == FACTS
    spec_file = next(a.manifest for a in actions if isinstance(a, Create) and a.manifest["kind"] == "ConfigMap")
    assert json.loads(spec_file["data"]["spec.json"])["resources"]["accelerators"] == 1
    pod = _training_job(actions)["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "sized to 1 node(s) x 1 nvidia.com/gpu" in written.conditions[2].message


def test_a_restarted_operator_sizes_from_the_status_when_the_preflight_is_gone(job: dict[str, Any]) -> None:
    kept = FineTuneJobStatus(start_time=NOW, attempts=1, model_facts=FACTS)

    actions = plan(_body(_auto_hub_job(job), kept), Snapshot(), PROFILES, NOW)

    assert "delete ConfigMap demo-spec" not in _kinds(actions)
    pod = _training_job(actions)["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_a_preflight_that_reported_no_facts_fails_the_job_with_a_reason(job: dict[str, Any]) -> None:
    status = FineTuneJobStatus(start_time=NOW)

    actions = plan(
        _body(_auto_hub_job(job), status), Snapshot(preflight=_preflight(True, {"status": "Succeeded"})), PROFILES, NOW
    )

    assert not [a for a in actions if isinstance(a, Create | Delete)]
    failed = _status(actions).conditions[-1]
    assert (failed.reason, failed.status) == ("DoesNotFit", "True")
    assert "the preflight reported no facts of microsoft/Phi-3-mini-128k-instruct" in failed.message
