"""The multi-process rows of the support matrix, run as the trainer image runs them:
torchrun with two CPU processes over gloo. Each asserts that the loss falls, that the
engine asked for is the engine that ran (ZeRO-3: each rank holds half the weights), and
that every output reloads and answers from memory. A row the matrix says another row covers
(ZeRO-1 and ZeRO-2 run through one method each; onnx is exported where the export takes a
path of its own) is not run again. FSDP rows need accelerators and run in the GPU check script."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import MethodType
from kubetune.catalog import Strategy, SupportRow, support_matrix
from kubetune.contract import ExitCode
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


def test_every_cpu_row_runs_or_names_a_run_that_covers_it() -> None:
    """Each row without accelerators runs here or in test_train.py (one process), or names a
    row that runs and takes its paths: the same engine saving the same way (an adapter, or the
    whole model) at a stage that shards no weights, or for an onnx output an export of the same
    kind of merge, in one process (after ZeRO-3: after ZeRO-3)."""
    run = {(r.method, r.strategy, r.output) for r in CPU_ROWS if r.covered_by is None}
    for row in CPU_ROWS:
        cover = row.covered_by
        if cover is None:
            continue
        assert (cover.method, cover.strategy, cover.output) in run, row
        assert cover.output == row.output and (cover.method == "full") == (row.method == "full"), row
        if row.output == "onnx":
            assert cover.strategy is (Strategy.ZERO3 if row.strategy is Strategy.ZERO3 else Strategy.SINGLE), row
        else:
            assert {row.strategy, cover.strategy} <= {Strategy.ZERO1, Strategy.ZERO2}, row
    # Every strategy runs, and every method runs in one process, under DDP and under ZeRO-3.
    assert {strategy for _, strategy, _ in run} == {Strategy.SINGLE, *STRATEGIES}
    for strategy in (Strategy.SINGLE, Strategy.DDP, Strategy.ZERO3):
        assert {method for method, s, _ in run if s is strategy} == {m.value for m in MethodType}, strategy


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
    model, tokenizer = reload_output(row.output, folder / "out", volumes)
    question, answer = FACTS[5]
    assert greedy_answer(model, tokenizer, question) == answer


def test_zero3_with_optimizer_and_parameter_offload_trains(volumes: Path, tmp_path: Path) -> None:
    distributed = {
        "strategy": "deepspeed",
        "deepspeed": {"stage": 3, "offloadOptimizer": True, "offloadParameters": True},
    }
    process = launch(_spec("full", ["merged"], distributed), volumes, tmp_path, processes=2)

    assert process.wait(timeout=600) == ExitCode.OK, (tmp_path / "log.txt").read_text()[-4000:]
    config = json.loads((tmp_path / "out" / "checkpoints" / "deepspeed.json").read_text())
    assert config["zero_optimization"]["offload_param"]["device"] == "cpu"
    engine = summary_in(tmp_path / "out").engine
    assert engine is not None and engine.zero_stage == 3


def _checkpointing(
    strategy: Strategy, steps: int, at_least: int, volumes: Path, folder: Path
) -> tuple[Any, subprocess.Popen[bytes]]:
    """A 2-process LoRA run checkpointing every 20 steps, once it has a complete checkpoint
    at `at_least` steps or later."""
    import time

    spec = _spec(
        "lora",
        ["adapter"],
        STRATEGIES[strategy],
        training={"maxSteps": steps, "loggingInterval": 20},
        checkpoint={"intervalSteps": 20, "keep": 2},
    )
    process = launch(spec, volumes, folder, processes=2)
    deadline = time.monotonic() + 300
    while not any(
        (p / MARKER).exists() and step >= at_least for step, p in checkpoints(folder / "out" / "checkpoints")
    ):
        assert process.poll() is None and time.monotonic() < deadline, (folder / "log.txt").read_text()[-4000:]
        time.sleep(0.1)
    return spec, process


def test_killed_zero3_run_resumes_from_its_checkpoint(volumes: Path, tmp_path: Path) -> None:
    spec, process = _checkpointing(Strategy.ZERO3, 200, 40, volumes, tmp_path)
    kill_everything(tmp_path)
    process.wait()
    reached = max(step for step, p in checkpoints(tmp_path / "out" / "checkpoints") if (p / MARKER).exists())

    again = launch(spec, volumes, tmp_path, processes=2)

    assert again.wait(timeout=600) == ExitCode.OK, (tmp_path / "log.txt").read_text()[-4000:]
    metrics = summary_in(tmp_path / "out").metrics
    assert metrics is not None and metrics.steps == 200
    assert (
        f"resuming from {tmp_path / 'out' / 'checkpoints' / f'checkpoint-{reached}'}"
        in (tmp_path / "log.txt").read_text()
    )


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


def test_sigterm_to_one_rank_checkpoints_every_rank_at_the_same_step(volumes: Path, tmp_path: Path) -> None:
    """An evicted pod's ranks get SIGTERM and the other pods' do not: every rank still stops
    at the same step, with one complete checkpoint, instead of waiting on a collective."""
    import os
    import signal

    _, process = _checkpointing(Strategy.DDP, 400, 20, volumes, tmp_path)

    os.kill(_rank_pid(tmp_path, 1), signal.SIGTERM)

    try:
        process.wait(timeout=180)
    finally:
        kill_everything(tmp_path)
    summary = summary_in(tmp_path, "termination-log")
    assert summary.reason == "Interrupted", (tmp_path / "log.txt").read_text()[-4000:]
    stopped_at = int(str(summary.message).split("at step ")[1].split(";")[0])
    newest_step, newest = checkpoints(tmp_path / "out" / "checkpoints")[0]
    assert newest_step == stopped_at < 400
    assert (newest / MARKER).exists()
