"""Datasets read from, and results written to, S3-compatible storage: a real S3 protocol
server on loopback (moto in server mode), reached with credentials from a mounted Secret."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.spec import OutputSpec
from kubetune.contract import ExitCode
from kubetune_trainer.main import run
from kubetune_trainer.runtime import Runtime

from .conftest import FACTS, KEY_ID, SECRET, chat_rows, greedy_answer, memorise_spec

pytestmark = pytest.mark.slow


@pytest.fixture
def s3(endpoint: str) -> Any:
    import boto3

    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET
    )
    for bucket in ("datasets", "models"):
        client.create_bucket(Bucket=bucket)
    return client


def test_trains_from_a_bucket_and_publishes_to_a_bucket(
    s3: Any, endpoint: str, cloud_runtime: Runtime, volumes: Path, tmp_path: Path
) -> None:
    s3.put_object(
        Bucket="datasets", Key="facts/train.jsonl", Body="".join(json.dumps(row) + "\n" for row in chat_rows()).encode()
    )
    location = {"endpoint": endpoint, "credentialsSecret": {"name": "s3-credentials"}}
    spec = memorise_spec("lora", ["adapter"])
    spec = spec.model_copy(
        update={
            "dataset": spec.dataset.model_copy(update={"pvc": None, "s3": None}).model_validate(
                {"s3": {"uri": "s3://datasets/facts/", **location}, "maxSeqLength": 128}
            ),
            "output": OutputSpec.model_validate(
                {"s3": {"uri": "s3://models/demo", **location}, "formats": ["adapter"]}
            ),
        }
    )

    code, summary = run(spec, cloud_runtime)

    assert code is ExitCode.OK, summary
    assert summary.output.location == "s3://models/demo"
    keys = {item["Key"] for item in s3.list_objects_v2(Bucket="models", Prefix="demo/")["Contents"]}
    assert {"demo/adapter/adapter_model.safetensors", "demo/summary.json", "demo/report.html", "demo/README.md"} <= keys
    # The published result holds no checkpoint; the checkpoints' own copy lies beside it.
    assert {key for key in keys if "checkpoint-" in key} == {
        key for key in keys if key.startswith("demo/checkpoints/checkpoint-60/")
    }
    assert "demo/checkpoints/checkpoint-60/COMPLETE" in keys
    fetched = tmp_path / "fetched"
    for key in keys:
        if key.startswith("demo/adapter/"):
            target = fetched / Path(key).relative_to("demo")
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file("models", key, str(target))
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(volumes / "models" / "tiny-phi3"), fetched / "adapter"
    )
    assert greedy_answer(model, AutoTokenizer.from_pretrained(fetched / "adapter"), FACTS[1][0]) == FACTS[1][1]
    produced = [p.read_bytes() for p in cloud_runtime.work.rglob("*") if p.is_file()]
    assert not any(SECRET.encode() in blob for blob in produced), "the secret leaked into the work folder"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://roots", ["a.jsonl", "deep/b.csv"]),
        ("s3://roots/", ["a.jsonl", "deep/b.csv"]),
        ("s3://roots/deep", ["b.csv"]),
        ("s3://roots/a.jsonl", ["a.jsonl"]),
    ],
)
def test_a_bucket_root_a_folder_or_one_object_downloads(
    uri: str, expected: list[str], s3: Any, endpoint: str, cloud_runtime: Runtime, tmp_path: Path
) -> None:
    from kubetune.api.spec import S3Location
    from kubetune_trainer.stores.s3 import Bucket

    s3.create_bucket(Bucket="roots")  # a bucket of its own: the server outlives the test
    for key in ("a.jsonl", "deep/b.csv", "deep/notes.txt", "deeper/c.json"):
        s3.put_object(Bucket="roots", Key=key, Body=b"{}")
    location = S3Location.model_validate(
        {"uri": uri, "endpoint": endpoint, "credentialsSecret": {"name": "s3-credentials"}}
    )
    suffixes = (".jsonl", ".csv") if uri != "s3://roots/deep" else (".csv", ".json")

    files = Bucket.open(location, cloud_runtime).download(tmp_path / "got", suffixes)

    assert sorted(f.relative_to(tmp_path / "got").as_posix() for f in files) == expected


def test_a_missing_object_is_a_located_data_error(s3: Any, endpoint: str, cloud_runtime: Runtime) -> None:
    spec = memorise_spec("lora", ["adapter"])
    spec = spec.model_copy(
        update={
            "dataset": spec.dataset.model_validate(
                {
                    "s3": {
                        "uri": "s3://datasets/nothing-here.jsonl",
                        "endpoint": endpoint,
                        "credentialsSecret": {"name": "s3-credentials"},
                    }
                }
            )
        }
    )

    code, summary = run(spec, dataclasses.replace(cloud_runtime, output_override=cloud_runtime.work / "out"))

    assert code is ExitCode.INVALID_DATA
    assert summary.message == "s3://datasets/nothing-here.jsonl: no .jsonl, .json, .csv, .parquet objects there"
