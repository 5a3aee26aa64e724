from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import DataFormat
from kubetune.api.spec import DatasetSpec
from kubetune.contract import ExitCode
from kubetune_trainer.data.pipeline import PreparedData, read_dataset, split_for_evaluation, tokenize_dataset
from kubetune_trainer.errors import InvalidData
from kubetune_trainer.main import run
from kubetune_trainer.runtime import Runtime

from ..conftest import chat_rows, memorise_spec, write_jsonl


def prepare(dataset: DatasetSpec, tokenizer: Any, runtime: Runtime, seed: int) -> PreparedData:
    return tokenize_dataset(read_dataset(dataset, runtime, seed), dataset, tokenizer)


@pytest.fixture(scope="module")
def tokenizer(volumes: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(volumes / "models" / "tiny-phi3")


def test_evaluation_fraction_holds_out_examples_with_the_seed() -> None:
    examples: list[Any] = list(range(20))

    train, held = split_for_evaluation(examples, 0.25, seed=7)
    again = split_for_evaluation(examples, 0.25, seed=7)

    assert len(held) == 5 and len(train) == 15
    assert set(train) | set(held) == set(examples)
    assert (train, held) == again


def test_prepare_reads_a_configmap_source_and_a_separate_evaluation_source(tokenizer: Any, runtime: Runtime) -> None:
    write_jsonl(runtime.configmaps / "data" / "train.jsonl", chat_rows())
    write_jsonl(runtime.configmaps / "data" / "eval.jsonl", chat_rows()[:2])
    spec = DatasetSpec.model_validate(
        {
            "configMap": {"name": "data", "key": "train.jsonl"},
            "evaluation": {"source": {"configMap": {"name": "data", "key": "eval.jsonl"}}},
        }
    )

    data = prepare(spec, tokenizer, runtime, seed=1)

    assert data.format is DataFormat.CHAT
    assert (len(data.train), len(data.eval)) == (8, 2)
    assert data.stats.summary().examples == 8


def test_packing_returns_packed_sequences(tokenizer: Any, runtime: Runtime) -> None:
    spec = DatasetSpec.model_validate(
        {"pvc": {"claimName": "data", "path": "train.jsonl"}, "packing": True, "maxSeqLength": 64}
    )

    data = prepare(spec, tokenizer, runtime, seed=1)

    assert len(data.train) < 8
    assert all(len(p.input_ids) <= 64 for p in data.train)


def test_a_folder_with_no_data_is_refused(tokenizer: Any, runtime: Runtime) -> None:
    (runtime.volumes / "empty").mkdir(exist_ok=True)
    spec = DatasetSpec.model_validate({"pvc": {"claimName": "empty", "path": "/"}})

    with pytest.raises(InvalidData, match=r"no \.jsonl, \.json, \.csv, \.parquet files"):
        prepare(spec, tokenizer, runtime, seed=1)


@pytest.mark.parametrize(
    ("name", "content"), [("blank.jsonl", "\n \n"), ("empty.json", "[]"), ("header-only.csv", "text\n")]
)
def test_a_source_without_rows_is_refused_by_name(runtime: Runtime, tmp_path: Path, name: str, content: str) -> None:
    (tmp_path / "claims" / "data").mkdir(parents=True)
    (tmp_path / "claims" / "data" / name).write_text(content)
    spec = DatasetSpec.model_validate({"pvc": {"claimName": "data", "path": name}})

    with pytest.raises(InvalidData, match=rf"^data:{name} holds no rows; a dataset needs at least one example$"):
        read_dataset(spec, dataclasses.replace(runtime, volumes=tmp_path / "claims"), seed=1)


def test_bad_data_fails_before_the_model_loads_with_a_termination_message(runtime: Runtime, tmp_path: Path) -> None:
    claims = tmp_path / "claims"
    write_jsonl(claims / "data" / "train.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    # No model exists on this claim: reaching the model would fail with another reason.
    code, summary = run(memorise_spec("lora", ["adapter"]), dataclasses.replace(runtime, volumes=claims))

    assert code is ExitCode.INVALID_DATA
    assert summary.reason == "DatasetInvalid"
    assert summary.message == "train.jsonl line 1: no assistant turn to learn from"
    assert json.loads(runtime.termination_log.read_text())["reason"] == "DatasetInvalid"
