"""The multi-process rows of the support matrix: two CPU processes over gloo, each given what
torchrun gives a rank. Each asserts that the loss falls, that the engine asked for is the
engine that ran (ZeRO-3: each rank holds half the weights), and that every output reloads and
answers from memory. A row the matrix says another row covers (ZeRO-1 and ZeRO-2 run through
one method each, the adapter methods under DDP through qlora and lora under ZeRO-3 through
dora; onnx is exported where the export takes a path of its own) is not run again. FSDP rows
need accelerators and run in the GPU check script.

The ranks are forked from a process that imported the trainer once (forked.py): a torchrun
launch of two processes costs about 20 s here before the first step, importing torch,
transformers and DeepSpeed twice on two cores, where a tiny run's steps take under a second.
The tests share runs, one per row run. The run evicted on one rank is torchrun's, whose
passing of that rank's SIGTERM is part of what it tests."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import MethodType
from kubetune.catalog import Strategy, SupportRow, support_matrix
from kubetune.contract import ExitCode, RunSummary
from kubetune_trainer.checkpoints import MARKER, checkpoints

from .conftest import (
    FACTS,
    greedy_answer,
    kill_everything,
    launch,
    memorise_spec,
    rank_engines,
    reload_output,
    summary_in,
    training_losses,
)

pytestmark = pytest.mark.slow

BUILT_OUTPUTS = {"adapter", "merged", "onnx"}
STRATEGIES = {
    Strategy.DDP: {"strategy": "ddp"},
    Strategy.ZERO1: {"strategy": "deepspeed", "deepspeed": {"stage": 1}},
    Strategy.ZERO2: {"strategy": "deepspeed", "deepspeed": {"stage": 2}},
    Strategy.ZERO3: {"strategy": "deepspeed", "deepspeed": {"stage": 3}},
}
CPU_ROWS = [r for r in support_matrix() if r.supported and not r.needs_accelerator and r.output in BUILT_OUTPUTS]
ROWS = [r for r in CPU_ROWS if r.strategy in STRATEGIES and r.covered_by is None]
ENGINES = {
    Strategy.DDP: "DistributedDataParallel",
    Strategy.ZERO1: "DeepSpeedEngine",
    Strategy.ZERO2: "DeepSpeedEngine",
    Strategy.ZERO3: "DeepSpeedEngine",
}


# Rows of one strategy covered by another method's run under it: DDP wraps whatever trains
# alike, so qlora's run (the base that loads differently) takes the other adapters' path; ZeRO-3
# shards what the method loads, so lora (the base dora loads too) runs through dora, whose
# magnitude vectors need each whole weight gathered.
SAME_ENGINE_COVERS = {
    Strategy.DDP: {("lora", "qlora"), ("dora", "qlora")},
    Strategy.ZERO3: {("lora", "dora")},
}


def test_every_cpu_row_runs_or_names_a_run_that_covers_it() -> None:
    """Each row without accelerators runs here or in test_train.py (one process), or names a
    row that runs and takes its paths: the same engine saving the same way (an adapter, or the
    whole model) at a stage that shards no weights, or under DDP and ZeRO-3 another adapter
    method's run as SAME_ENGINE_COVERS says, or for an onnx output an export of the same kind
    of merge, in one process (after ZeRO-3: after ZeRO-3)."""
    run = {(r.method, r.strategy, r.output) for r in CPU_ROWS if r.covered_by is None}
    for row in CPU_ROWS:
        cover = row.covered_by
        if cover is None:
            continue
        assert (cover.method, cover.strategy, cover.output) in run, row
        assert cover.output == row.output and (cover.method == "full") == (row.method == "full"), row
        if row.output == "onnx":
            assert cover.strategy is (Strategy.ZERO3 if row.strategy is Strategy.ZERO3 else Strategy.SINGLE), row
        elif row.strategy in (Strategy.ZERO1, Strategy.ZERO2):
            assert cover.strategy in (Strategy.ZERO1, Strategy.ZERO2), row
        else:
            assert cover.strategy is row.strategy, row
            assert (row.method, cover.method) in SAME_ENGINE_COVERS.get(row.strategy, set()), row
    # Every strategy runs, and every method in one process. The base that loads differently
    # (qlora) and the whole model (full) run under DDP and under ZeRO-3; dora under ZeRO-3.
    assert {strategy for _, strategy, _ in run} == {Strategy.SINGLE, *STRATEGIES}
    assert {method for method, s, _ in run if s is Strategy.SINGLE} == {m.value for m in MethodType}
    for strategy in (Strategy.DDP, Strategy.ZERO3):
        assert {"qlora", "full"} <= {method for method, s, _ in run if s is strategy}, strategy
    assert ("dora", Strategy.ZERO3, "onnx") in run and ("full", Strategy.ZERO3, "onnx") in run


def _spec(method: str, formats: list[str], distributed: dict[str, Any], **changes: Any) -> Any:
    return memorise_spec(
        method,
        formats,
        distributed=distributed,
        training={"perDeviceBatchSize": 2, **changes.pop("training", {})},
        **changes,
    )


def _formats(method: str, strategy: Strategy) -> list[str]:
    """What the run of `method` under `strategy` writes: the outputs of the rows it runs."""
    return sorted({r.output for r in ROWS if (r.method, r.strategy) == (method, strategy)})


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, Strategy], Path]:
    return {}


def _run(
    key: tuple[str, Strategy],
    runs: dict[tuple[str, Strategy], Path],
    volumes: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    if key not in runs:
        method, strategy = key
        folder = tmp_path_factory.mktemp(f"{method}-{strategy.value}")
        process = launch(_spec(method, _formats(method, strategy), STRATEGIES[strategy]), volumes, folder, processes=2)
        assert process.wait(timeout=600) == ExitCode.OK, (folder / "log.txt").read_text()[-4000:]
        runs[key] = folder
    return runs[key]


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.method}-{r.strategy.value}-{r.output}" for r in ROWS])
def test_row_trains_on_two_processes_with_the_engine_asked_for(
    row: SupportRow,
    runs: dict[tuple[str, Strategy], Path],
    volumes: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    folder = _run((row.method, row.strategy), runs, volumes, tmp_path_factory)
    losses = training_losses(summary_in(folder / "out"))
    ranks = rank_engines(folder / "work")

    assert losses[-1] < losses[0] / 10, losses
    assert [r.engine for r in ranks] == [ENGINES[row.strategy]] * 2
    assert all(r.world_size == 2 for r in ranks)
    if row.strategy is Strategy.ZERO3:
        assert all(r.zero_stage == 3 for r in ranks)
        assert all(r.local_parameter_elements <= r.parameter_elements * 0.55 for r in ranks), ranks
    if row.strategy is not Strategy.DDP:
        # DeepSpeed compiled no op (its shared-memory all-reduce serves inference only).
        assert "built successfully" not in (folder / "log.txt").read_text()
    model, tokenizer = reload_output(row.output, folder / "out", volumes)
    question, answer = FACTS[5]
    assert greedy_answer(model, tokenizer, question) == answer


def test_zero3_with_optimizer_and_parameter_offload_trains(volumes: Path, tmp_path: Path) -> None:
    distributed = {
        "strategy": "deepspeed",
        "deepspeed": {"stage": 3, "offloadOptimizer": True, "offloadParameters": True},
    }
    # What is asserted is the engine's configuration and stage, not learning: a few steps do.
    spec = _spec("full", ["merged"], distributed, training={"maxSteps": 4, "loggingInterval": 2})
    process = launch(spec, volumes, tmp_path, processes=2)

    assert process.wait(timeout=600) == ExitCode.OK, (tmp_path / "log.txt").read_text()[-4000:]
    config = json.loads((tmp_path / "out" / "checkpoints" / "deepspeed.json").read_text())
    assert config["zero_optimization"]["offload_param"]["device"] == "cpu"
    engine = summary_in(tmp_path / "out").engine
    assert engine is not None and engine.zero_stage == 3


def _rank_pid(folder: Path, rank: int) -> int:
    """The process of one rank of a run started by `launch` (found by its spec and RANK)."""
    marker, wanted = f"KUBETUNE_SPEC={folder / 'spec.json'}".encode(), f"RANK={rank}".encode()
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0") if proc.name.isdigit() else []
        except OSError:
            continue
        if marker in environ and wanted in environ:
            return int(proc.name)
    raise AssertionError(f"no rank {rank} process")


EVICTED_STEPS = 80


@dataclass(frozen=True)
class Evicted:
    """A 2-process ZeRO-3 run whose rank 1 alone got SIGTERM, then started again in place:
    the first attempt's termination message and checkpoints (step, folder, files), and the
    second attempt's exit code and log."""

    folder: Path
    termination: RunSummary
    checkpoints: list[tuple[int, Path, frozenset[str]]]
    resumed_code: int
    resumed_log: str


@pytest.fixture(scope="module")
def evicted(volumes: Path, tmp_path_factory: pytest.TempPathFactory) -> Evicted:
    """An evicted pod's ranks get SIGTERM and the other pods' do not; the job's next attempt
    starts every rank again on the same output. Once it has a complete checkpoint, a LoRA
    run under ZeRO-3 (whose checkpoint each rank writes its shard of) gets SIGTERM on rank 1."""
    folder = tmp_path_factory.mktemp("evicted")
    spec = _spec(
        "lora",
        ["adapter"],
        STRATEGIES[Strategy.ZERO3],
        training={"maxSteps": EVICTED_STEPS, "loggingInterval": 20},
        checkpoint={"intervalSteps": 20, "keep": 2},
    )
    # torchrun itself: how it passes one rank's SIGTERM on is part of what is tested.
    process = launch(spec, volumes, folder, processes=2, torchrun=True)
    deadline = time.monotonic() + 300
    while not any((p / MARKER).exists() for _, p in checkpoints(folder / "out" / "checkpoints")):
        assert process.poll() is None and time.monotonic() < deadline, (folder / "log.txt").read_text()[-4000:]
        time.sleep(0.1)

    os.kill(_rank_pid(folder, 1), signal.SIGTERM)

    try:
        process.wait(timeout=180)
    finally:
        kill_everything(folder)
    termination = summary_in(folder, "termination-log")
    found = [
        (step, path, frozenset(p.name for p in path.rglob("*") if p.is_file()))
        for step, path in checkpoints(folder / "out" / "checkpoints")
    ]
    logged = len((folder / "log.txt").read_text())
    again = launch(spec, volumes, folder, processes=2)  # the resume is the trainer's, not torchrun's
    code = again.wait(timeout=600)
    return Evicted(folder, termination, found, code, (folder / "log.txt").read_text()[logged:])


def test_sigterm_to_one_rank_checkpoints_every_rank_at_the_same_step(evicted: Evicted) -> None:
    """Every rank stops at the same step, with one complete checkpoint holding each rank's
    shard, instead of waiting on a collective."""
    assert evicted.termination.reason == "Interrupted", evicted.termination
    stopped_at = int(str(evicted.termination.message).split("at step ")[1].split(";")[0])
    newest_step, _, files = evicted.checkpoints[0]
    assert newest_step == stopped_at < EVICTED_STEPS
    assert MARKER in files
    for rank in (0, 1):
        assert any(f"zero_pp_rank_{rank}_" in name and "optim_states" in name for name in files), files


def test_zero3_run_stopped_on_one_rank_resumes_from_its_checkpoint(evicted: Evicted) -> None:
    _, newest, _ = evicted.checkpoints[0]

    assert evicted.resumed_code == ExitCode.OK, evicted.resumed_log[-4000:]
    assert f"resuming from {newest}" in evicted.resumed_log
    metrics = summary_in(evicted.folder / "out").metrics
    assert metrics is not None and metrics.steps == EVICTED_STEPS
