"""The multi-process task rows of the support matrix that run on CPUs: torchrun with two
processes over gloo, as the trainer image runs them. Each asserts that the loss falls, that
the engine asked for is the engine that ran, and that the output, read back outside
kubetune, scores what the run reported (the head, gathered from every rank, included)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.api import TaskType
from kubetune.api.tasks import TaskRow, task_rows
from kubetune.catalog import Strategy
from kubetune.contract import ExitCode

from .conftest import launch, rank_engines, summary_in, task_spec, training_losses
from .task_checks import measure, one_example

pytestmark = pytest.mark.slow

STRATEGIES = {
    Strategy.DDP: {"strategy": "ddp"},
    Strategy.ZERO1: {"strategy": "deepspeed", "deepspeed": {"stage": 1}},
    Strategy.ZERO2: {"strategy": "deepspeed", "deepspeed": {"stage": 2}},
    Strategy.ZERO3: {"strategy": "deepspeed", "deepspeed": {"stage": 3}},
}
ENGINES = {Strategy.DDP: "DistributedDataParallel"} | dict.fromkeys(
    (Strategy.ZERO1, Strategy.ZERO2, Strategy.ZERO3), "DeepSpeedEngine"
)
TINY = {
    TaskType.SEQUENCE_CLASSIFICATION: ("tiny-phi3", "topics-memo", "evalAccuracy"),
    TaskType.TOKEN_CLASSIFICATION: ("tiny-phi3", "entities-memo", "evalEntityF1"),
    TaskType.SEQ2SEQ: ("tiny-t5", "pairs", "evalBleu"),
}
ROWS = [r for r in task_rows() if r.supported and r.strategy in STRATEGIES and r.covered_by is None]


def test_every_cpu_row_runs_or_names_a_run_that_covers_it() -> None:
    rows = [r for r in task_rows() if r.supported and r.strategy in STRATEGIES]
    run = {(r.task, r.strategy) for r in ROWS}
    covering = {(r.covered_by.task, r.covered_by.strategy) for r in rows if r.covered_by is not None}

    assert {r.task for r in ROWS} == set(TINY)
    assert covering <= run
    # A covering run uses the engine of the row it covers: the same strategy, or ZeRO-3 for
    # another ZeRO stage.
    for row in rows:
        if row.covered_by is not None:
            assert row.covered_by.strategy in (row.strategy, Strategy.ZERO3), row
            assert ENGINES[row.covered_by.strategy] == ENGINES[row.strategy], row
    # Both kinds of task, a new classifier head and generation, run under ZeRO-3 themselves.
    assert {r.task.has_labels for r in ROWS if r.strategy is Strategy.ZERO3} == {True, False}


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.task.value}-{r.strategy.value}" for r in ROWS])
def test_task_row_trains_on_two_processes(row: TaskRow, task_volumes: Path, tmp_path: Path) -> None:
    model, data, figure = TINY[row.task]
    spec = task_spec(
        row.task.value,
        model,
        data,
        "lora",
        ["adapter"],
        distributed=STRATEGIES[row.strategy],
        training={"maxSteps": 40 if row.task is TaskType.SEQ2SEQ else 30, "perDeviceBatchSize": 4},
    )

    process = launch(spec, task_volumes, tmp_path, processes=2)

    assert process.wait(timeout=600) == ExitCode.OK, (tmp_path / "log.txt").read_text()[-4000:]
    summary = summary_in(tmp_path / "out")
    losses = training_losses(summary)
    ranks = rank_engines(tmp_path / "work")
    assert losses[-1] < losses[0] / 4, losses
    assert [r.engine for r in ranks] == [ENGINES[row.strategy]] * 2
    if row.strategy is Strategy.ZERO3:
        assert all(r.local_parameter_elements <= r.parameter_elements * 0.55 for r in ranks), ranks
    assert summary.metrics is not None and summary.baseline is not None
    after, before = summary.metrics.task_figures, summary.baseline.task_figures
    assert after[figure] > before[figure]
    reloaded = measure(row.task, "adapter", tmp_path / "out", task_volumes, data)
    assert reloaded == pytest.approx(after[figure], abs=one_example(row.task))
