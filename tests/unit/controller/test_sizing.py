"""Auto-sizing: the smallest accelerator setup the estimate says fits, or a clear refusal."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api import parse_finetunejob
from kubetune.api.enums import StrategyType
from kubetune.controller.builders import NotBuildable
from kubetune.controller.settings import AcceleratorProfile, Settings, SettingsError
from kubetune.controller.sizing import size_job
from kubetune.estimate import read_model_facts

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
        (
            Settings(accelerator_profiles=(A100,)),
            {"huggingFace": {"repo": "org/model"}},
            "the preflight reported no facts of org/model (its config.json)",
        ),
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


PHI3_MINI_CONFIG = {
    "model_type": "phi3",
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32064,
    "tie_word_embeddings": False,
}


def test_a_model_named_by_its_repo_sizes_from_the_facts_its_preflight_reported(job: dict[str, Any]) -> None:
    settings = Settings(accelerator_profiles=(A100,))
    preset, _ = size_job(_auto(job, "full"), settings)
    job["spec"]["model"] = {"huggingFace": {"repo": "microsoft/Phi-3-mini-128k-instruct"}}

    sized, why = size_job(_auto(job, "full"), settings, read_model_facts(PHI3_MINI_CONFIG))

    assert sized.spec.resources == preset.spec.resources
    assert sized.spec.distributed == preset.spec.distributed
    assert sized.spec.resources.accelerators > 1
    assert why.startswith("sized to 1 node(s) x ")


def test_a_mixture_of_experts_needs_room_for_every_expert(job: dict[str, Any]) -> None:
    mistral = {**PHI3_MINI_CONFIG, "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336}
    mistral |= {"num_key_value_heads": 8, "vocab_size": 32000}
    mixtral = mistral | {"model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2}
    job["spec"]["model"] = {"huggingFace": {"repo": "org/model"}}
    job["spec"]["training"] = {"gradientCheckpointing": True}
    settings = Settings(accelerator_profiles=(A100,))

    dense, _ = size_job(_auto(job), settings, read_model_facts(mistral))
    experts, why = size_job(_auto(job), settings, read_model_facts(mixtral))

    assert dense.spec.resources.accelerators == 1
    # Mixtral's 46.7 billion parameters take 87 GiB in 16 bits: ZeRO-3 over two devices.
    assert experts.spec.resources.accelerators == 2, why
    assert experts.spec.distributed.strategy is StrategyType.DEEPSPEED
