"""The trainer's slow tier: real training runs on the tiny models, in process and as the image
starts them (torchrun), and the ONNX exports. The claims, specs and runtimes are the unit tier's
(tests/unit/trainer/conftest.py); what starts a run and reads its outputs back lives here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import pytest

from kubetune.api import FineTuneJobSpec
from kubetune.contract import EngineFacts, RunSummary
from tests.unit.trainer.conftest import (
    CORPUS,
    FACTS,
    KEY_ID,
    SECRET,
    _free_port,
    adapter,
    chat_rows,
    cloud_runtime,
    endpoint,
    memorise_spec,
    runtime,
    runtime_in,
    task_spec,
    task_volumes,
    volumes,
    write_jsonl,
)

from . import forked

__all__ = [
    "CORPUS",
    "FACTS",
    "KEY_ID",
    "SECRET",
    "_free_port",
    "adapter",
    "chat_rows",
    "cloud_runtime",
    "endpoint",
    "greedy_answer",
    "kill_everything",
    "launch",
    "memorise_spec",
    "reload_output",
    "runtime",
    "runtime_in",
    "task_spec",
    "task_volumes",
    "volumes",
    "write_jsonl",
]


def summary_in(folder: Path, name: str = "summary.json") -> RunSummary:
    """The summary a run left in `folder` (summary.json, or the termination message's file),
    read strictly: a part that drifted from the contract fails the test instead of being
    left out as the operator's lenient reading would."""
    return RunSummary.model_validate_json((folder / name).read_text())


def training_losses(summary: RunSummary) -> list[float]:
    """The training loss of each history record that has one, in order."""
    return [record.loss for record in summary.history or [] if record.loss is not None]


def rank_engines(work: Path) -> list[EngineFacts]:
    """What each rank recorded of the engine that ran (work/ranks/rank-N.json), by rank."""
    return [EngineFacts.model_validate_json(p.read_text()) for p in sorted((work / "ranks").glob("rank-*.json"))]


def launch(
    spec: FineTuneJobSpec,
    volumes: Path,
    folder: Path,
    processes: int = 1,
    env: Mapping[str, str] | None = None,
    torchrun: bool = False,
) -> Launched:
    """Start the trainer, forked from a server that imported it once (forked.py): one process as
    `python -m kubetune_trainer`, several as torchrun's ranks. With `torchrun`, the image's
    launcher starts it instead, as a test of the launcher itself needs. Output goes to log.txt;
    `env` adds or replaces variables (KUBETUNE_OUTPUT="" sends the output where the spec says)."""
    from kubetune.api.resource import dump_spec

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(dump_spec(spec))
    variables = os.environ | {
        "KUBETUNE_SPEC": str(folder / "spec.json"),
        "KUBETUNE_VOLUMES": str(volumes),
        "KUBETUNE_WORK": str(folder / "work"),
        "KUBETUNE_OUTPUT": str(folder / "out"),
        "KUBETUNE_TERMINATION_LOG": str(folder / "termination-log"),
        "KUBETUNE_PROGRESS_PORT": "0",
        "OMP_NUM_THREADS": "1",
    }
    variables |= env or {}
    if not torchrun:
        return forked.start(variables, folder / "log.txt", processes)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
    command += ["--master-port", str(_free_port()), "-m", "kubetune_trainer"]
    log = (folder / "log.txt").open("ab")
    return subprocess.Popen(command, env=variables, stdout=log, stderr=log)


class Launched(Protocol):
    """A started run, read as a process: a `subprocess.Popen` or the ranks of a `ForkedRun`."""

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, number: int) -> None: ...

    def kill(self) -> None: ...


@pytest.fixture(autouse=True)
def _no_forked_run_left() -> Iterator[None]:
    """A test that fails while its run trains leaves no process training on."""
    yield
    forked.kill_all()


def kill_everything(folder: Path) -> None:
    """SIGKILL torchrun and every rank of a run `launch` started with torchrun, as when a pod
    dies. The ranks run in sessions of their own, so they are found by the spec they read (a
    forked run's processes show the server's environment there instead: `.kill()` ends them)."""
    marker = f"KUBETUNE_SPEC={folder / 'spec.json'}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def greedy_answer(model: Any, tokenizer: Any, question: str) -> str:
    import torch

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return str(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)).strip()


def reload_output(output: str, out: Path, volumes: Path) -> tuple[Any, Any]:
    """The model and tokenizer a run's output format reloads as. An onnx output must have passed
    its check against the merged model it was exported from, which is what reloads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if output == "adapter":
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(volumes / "models" / "tiny-phi3")
        return PeftModel.from_pretrained(base, out / "adapter"), AutoTokenizer.from_pretrained(out / "adapter")
    if output == "onnx":
        check = json.loads((out / "onnx" / "onnx_check.json").read_text())
        assert check["passed"] and check["tokensEqual"] == check["tokensCompared"] > 0, check
    return AutoModelForCausalLM.from_pretrained(out / "merged"), AutoTokenizer.from_pretrained(out / "merged")
