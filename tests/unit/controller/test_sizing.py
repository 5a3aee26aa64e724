"""Auto-sizing: the smallest accelerator setup the estimate says fits, or a clear refusal."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api import parse_finetunejob
from kubetune.api.enums import StrategyType
from kubetune.controller.builders import NotBuildable
from kubetune.controller.settings import AcceleratorProfile, Settings, SettingsError
from kubetune.controller.sizing import size_job

A100 = AcceleratorProfile("a100-80g", "nvidia.com/gpu", 80, 8, {"gpu": "a100"})


def _auto(job: dict[str, Any], method: str = "lora", **resources: Any) -> Any:
    job["spec"]["method"] = {"type": method}
    job["spec"]["resources"] = {"accelerators": "auto", **resources}
    return parse_finetunejob(job)


def test_a_job_with_a_size_is_left_alone(job: dict[str, Any]) -> None:
    parsed = parse_finetunejob(job)

    assert size_job(parsed, Settings()) == (parsed, "")


def test_full_fine_tuning_pools_devices_with_zero3_when_one_is_not_enough(job: dict[str, Any]) -> None:
    sized, why = size_job(_auto(job, "full"), Settings(accelerator_profiles=(A100,)))

    resources = sized.spec.resources
    assert resources.nodes == 1 and resources.accelerators > 1
    assert sized.spec.distributed.strategy is StrategyType.DEEPSPEED
    assert sized.spec.distributed.deepspeed is not None and sized.spec.distributed.deepspeed.stage == 3
    assert "strategy deepspeed" in why


def test_the_job_keeps_its_own_node_selector_over_the_profiles(job: dict[str, Any]) -> None:
    sized, _ = size_job(_auto(job, nodeSelector={"gpu": "mine", "zone": "a"}), Settings(accelerator_profiles=(A100,)))

    assert sized.spec.resources.node_selector == {"gpu": "mine", "zone": "a"}


@pytest.mark.parametrize(
    ("settings", "model", "message"),
    [
        (Settings(), {"preset": "phi-3-mini-4k-instruct"}, "needs accelerator profiles"),
        (Settings(accelerator_profiles=(A100,)), {"huggingFace": {"repo": "org/model"}}, "preset models only"),
        (
            Settings(accelerator_profiles=(AcceleratorProfile("tiny", "nvidia.com/gpu", 4, 1),)),
            {"preset": "phi-3-mini-4k-instruct"},
            "fits none of the accelerator profiles (tiny): even on 8 nodes of 1 x tiny it needs",
        ),
    ],
)
def test_jobs_that_cannot_be_sized_say_why(
    job: dict[str, Any], settings: Settings, model: dict[str, Any], message: str
) -> None:
    job["spec"]["model"] = model

    with pytest.raises(NotBuildable, match=message.replace("(", r"\(").replace(")", r"\)")):
        size_job(_auto(job), settings)


def test_profiles_come_from_the_environment_and_bad_ones_name_the_variable() -> None:
    env = {
        "KUBETUNE_ACCELERATOR_PROFILES": '[{"name": "l4", "resource": "nvidia.com/gpu", "memoryGiB": 24, "perNode": 4}]'
    }

    assert Settings.from_env(env).accelerator_profiles == (AcceleratorProfile("l4", "nvidia.com/gpu", 24.0, 4),)
    with pytest.raises(SettingsError, match=r"KUBETUNE_ACCELERATOR_PROFILES\[0\]: missing 'perNode'"):
        Settings.from_env({"KUBETUNE_ACCELERATOR_PROFILES": '[{"name": "x", "resource": "r", "memoryGiB": 1}]'})
    with pytest.raises(SettingsError, match="KUBETUNE_PROGRESS_INTERVAL='soon' is not a float"):
        Settings.from_env({"KUBETUNE_PROGRESS_INTERVAL": "soon"})
