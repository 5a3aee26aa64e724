from __future__ import annotations

from typing import Any

from kubetune.api import DataFormat, FineTuneJob, FineTuneJobSpec, MethodType, OutputFormat, TaskType, parse_finetunejob
from kubetune.api.enums import QuantType, StrategyType
from kubetune.api.resource import dump_spec
from kubetune.api.tasks import task_row, task_rows
from kubetune.catalog import Strategy


def test_minimal_manifest_gets_the_defaults_a_person_expects(job: dict[str, Any]) -> None:
    spec = parse_finetunejob(job).spec

    assert spec.task is TaskType.CAUSAL_LM
    assert spec.method.type is MethodType.LORA
    assert (spec.method.adapter.r, spec.method.adapter.alpha) == (16, 32)
    assert spec.method.quantized is None
    assert spec.model.trust_remote_code is False
    assert spec.resources.accelerators == 1
    assert spec.resources.accelerator_resource == "nvidia.com/gpu"
    assert spec.resources.nodes == 1
    assert spec.distributed.strategy is StrategyType.AUTO
    assert spec.matrix_strategy is Strategy.SINGLE
    assert spec.output.formats_for(spec.method.type) == [OutputFormat.ADAPTER]
    assert spec.dataset.completion_only_loss is True
    assert spec.dataset.preflight is True
    assert spec.max_retries == 2
    assert spec.suspend is False


def test_qlora_gets_nf4_double_quant_by_default(job: dict[str, Any]) -> None:
    job["spec"]["method"] = {"type": "qlora"}

    quant = parse_finetunejob(job).spec.method.quantized

    assert quant is not None
    assert quant.type is QuantType.NF4
    assert quant.double_quant is True


def test_dora_with_quantization_is_qdora(job: dict[str, Any]) -> None:
    job["spec"]["method"] = {"type": "dora", "quantization": {"type": "fp4"}}

    quant = parse_finetunejob(job).spec.method.quantized

    assert quant is not None and quant.type is QuantType.FP4


def test_full_fine_tuning_outputs_the_merged_model_by_default(job: dict[str, Any]) -> None:
    job["spec"]["method"] = {"type": "full"}

    spec = parse_finetunejob(job).spec

    assert spec.output.formats_for(spec.method.type) == [OutputFormat.MERGED]


def test_cpu_only_job_is_valid(job: dict[str, Any]) -> None:
    job["spec"]["resources"] = {"accelerators": 0}

    spec = parse_finetunejob(job).spec

    assert spec.resources.accelerators == 0
    assert spec.resources.world_size == 1


def test_auto_accelerators_leave_the_strategy_open(job: dict[str, Any]) -> None:
    job["spec"]["resources"] = {"accelerators": "auto"}

    spec = parse_finetunejob(job).spec

    assert spec.resources.world_size is None
    assert spec.matrix_strategy is None


def test_strategy_maps_to_support_matrix_rows(job: dict[str, Any]) -> None:
    job["spec"]["resources"] = {"accelerators": 4}
    job["spec"]["distributed"] = {"strategy": "deepspeed", "deepspeed": {"stage": 3}}

    assert parse_finetunejob(job).spec.matrix_strategy is Strategy.ZERO3

    job["spec"]["distributed"] = {"strategy": "auto"}
    assert parse_finetunejob(job).spec.matrix_strategy is Strategy.DDP


def test_spec_round_trips_through_its_wire_form(job: dict[str, Any]) -> None:
    parsed = parse_finetunejob(job)

    wire = parsed.model_dump(mode="json", by_alias=True, exclude_none=True)

    assert wire["spec"]["model"] == {"preset": "phi-3-mini-4k-instruct", "trustRemoteCode": False}
    assert FineTuneJob.model_validate(wire) == parsed


def test_unknown_metadata_is_kept(job: dict[str, Any]) -> None:
    job["metadata"]["uid"] = "1234"

    parsed = parse_finetunejob(job)

    assert parsed.model_dump(by_alias=True)["metadata"]["uid"] == "1234"


def test_dumped_spec_reads_back_equal_with_its_defaults(job: dict[str, Any]) -> None:
    job["spec"]["training"] = {"maxSteps": 10}
    spec = parse_finetunejob(job).spec

    again = FineTuneJobSpec.model_validate_json(dump_spec(spec))

    assert again == spec
    assert '"epochs"' not in dump_spec(spec)


def test_each_task_reads_its_own_formats_and_auto_tries_them_in_order() -> None:
    assert TaskType.CAUSAL_LM.formats[0] is DataFormat.CHAT
    assert TaskType.SEQUENCE_CLASSIFICATION.formats == (DataFormat.TEXT_LABEL,)
    assert TaskType.TOKEN_CLASSIFICATION.formats == (DataFormat.TOKENS_TAGS,)
    assert TaskType.SEQ2SEQ.formats == (DataFormat.SOURCE_TARGET, DataFormat.PROMPT_COMPLETION)
    every = {fmt for task in TaskType for fmt in task.formats}
    # Preference pairs are read by an objective (dpo, orpo), never detected for sft.
    assert every == set(DataFormat) - {DataFormat.AUTO, DataFormat.PREFERENCE}


def test_classification_job_with_its_labels_is_valid(job: dict[str, Any]) -> None:
    job["spec"]["task"] = "token-classification"
    job["spec"]["model"] = {"huggingFace": {"repo": "sentence-transformers/all-MiniLM-L6-v2"}}
    job["spec"]["dataset"] = {
        "configMap": {"name": "ner", "key": "train.jsonl"},
        "format": "tokens-tags",
        "labels": ["O", "B-PER", "I-PER"],
    }

    spec = parse_finetunejob(job).spec

    assert spec.task is TaskType.TOKEN_CLASSIFICATION
    assert spec.dataset.labels == ["O", "B-PER", "I-PER"]
    assert '"task": "token-classification"' in dump_spec(spec)


def test_task_rows_cover_every_task_beyond_causal_lm_and_every_strategy() -> None:
    rows = task_rows()

    assert {(r.task, r.strategy) for r in rows} == {
        (task, strategy) for task in TaskType if task is not TaskType.CAUSAL_LM for strategy in Strategy
    }
    assert all(r.supported == (r.strategy is not Strategy.FSDP) for r in rows)
    assert all(r.asserts for r in rows if r.supported)
    assert task_row(TaskType.CAUSAL_LM, Strategy.DDP) is None
