"""The estimate and auto-sizing of preference tuning: twice the sequences, and dpo's reference
model where it costs memory."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubetune.api import parse_finetunejob
from kubetune.catalog import presets
from kubetune.controller.settings import AcceleratorProfile, Settings
from kubetune.controller.sizing import size_job
from kubetune.estimate import GIB, ModelFacts, estimate

PHI3 = ModelFacts.of_preset(presets()["phi-3-mini-4k-instruct"])
PHI3_MINI = 3_821_079_552
H100 = AcceleratorProfile("h100-80g", "nvidia.com/gpu", 80, 8)


def _job(job: dict[str, Any], objective: str, method: str, **spec: Any) -> Any:
    job["spec"].update(objective=objective, method={"type": method}, **spec)
    job["spec"]["dataset"].pop("format", None)
    if method == "full":
        job["spec"]["output"]["formats"] = ["merged"]
    return parse_finetunejob(job)


@pytest.mark.parametrize("method", ["lora", "qlora", "dora"])
def test_dpo_with_an_adapter_costs_no_reference_but_twice_the_activations(job: dict[str, Any], method: str) -> None:
    sft = estimate(_job(copy.deepcopy(job), "sft", method).spec, PHI3, 1)
    dpo = estimate(_job(job, "dpo", method).spec, PHI3, 1)

    assert dpo.parts["reference"] == 0
    assert dpo.parts["activations"] == 2 * sft.parts["activations"]
    assert dpo.parts["weights"] == sft.parts["weights"]
    assert any("adapter switched off" in a for a in dpo.assumptions)


def test_dpo_with_full_fine_tuning_holds_a_copy_of_the_base_with_16_bit_linear_layers(job: dict[str, Any]) -> None:
    spec = _job(job, "dpo", "full").spec
    result = estimate(spec, PHI3, 1)

    linear = PHI3.linear_parameters(spec.task)
    assert 0.9 * PHI3_MINI < linear < PHI3_MINI
    assert result.parts["reference"] == 2 * linear + 4 * (PHI3_MINI - linear)
    # DeepSpeed ZeRO-1 and 2 hold the policy in 16 bits, and its copy likewise.
    job["spec"]["distributed"] = {"strategy": "deepspeed", "deepspeed": {"stage": 2}}
    assert estimate(_job(job, "dpo", "full").spec, PHI3, 1).parts["reference"] == 2 * PHI3_MINI


def test_orpo_has_no_reference_part(job: dict[str, Any]) -> None:
    result = estimate(_job(job, "orpo", "full").spec, PHI3, 1)

    assert "reference" not in result.parts
    assert any("two sequences per pair" in a for a in result.assumptions)


def test_a_named_reference_beside_a_4_bit_base_is_counted_4_bit(job: dict[str, Any]) -> None:
    preference = {"reference": {"pvc": {"claimName": "models", "path": "sft"}}}
    spec = _job(job, "dpo", "qlora", preference=preference).spec

    result = estimate(spec, PHI3, 1)

    assert 0 < result.parts["reference"] < PHI3_MINI  # about half a byte per parameter
    # The weights part holds the 4-bit base and its adapters; the reference, the base alone.
    assert result.parts["reference"] < result.parts["weights"] < 1.03 * result.parts["reference"]


def test_auto_sizing_shards_a_full_dpo_job_and_its_reference_with_zero3(job: dict[str, Any]) -> None:
    # Full dpo of Phi-3-mini at 512 tokens needs about 87 GiB on one device: more than an H100
    # holds, less than ZeRO-3 leaves on each of two, where the reference is sharded too.
    job["spec"]["resources"] = {"accelerators": "auto"}
    job["spec"]["dataset"]["maxSeqLength"] = 512
    dpo = _job(job, "dpo", "full")

    sized, why = size_job(dpo, Settings(accelerator_profiles=(H100,)))
    assert "strategy deepspeed" in why

    assert (sized.spec.resources.nodes, sized.spec.resources.accelerators) == (1, 2)
    assert "strategy deepspeed" in why
    assert sized.spec.distributed.deepspeed is not None and sized.spec.distributed.deepspeed.stage == 3
    alone, sharded = estimate(dpo.spec, PHI3, 1), estimate(sized.spec, PHI3, 2)
    assert alone.total > 80 * GIB > sharded.total
    # DeepSpeed holds the sharded reference in 16 bits alone.
    assert sharded.parts["reference"] == PHI3_MINI < alone.parts["reference"] / 2
    assert any("sharded like the model" in a for a in sharded.assumptions)


def test_auto_sizing_puts_a_preference_job_on_one_device(job: dict[str, Any]) -> None:
    job["spec"]["resources"] = {"accelerators": "auto"}
    job["spec"]["dataset"]["maxSeqLength"] = 512
    sized, why = size_job(_job(job, "orpo", "lora"), Settings(accelerator_profiles=(H100,)))

    assert (sized.spec.resources.nodes, sized.spec.resources.accelerators) == (1, 1)
    assert "1 node(s) x 1" in why
