"""A run killed mid-way resumes from its newest complete checkpoint and ends at the same
step count; SIGTERM (what Kubernetes sends on preemption) checkpoints before exiting; a
finished run started again trains nothing and keeps its figures.

One run does all three, as a job preempted twice would: killed (SIGKILL, as when a node
dies), started again and stopped by SIGTERM, started again and finished, then started once
more (as when a pod dies while it writes the outputs). Each test reads the attempts it is
about."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubetune.contract import ExitCode, RunSummary
from kubetune_trainer.checkpoints import MARKER, checkpoints

from .conftest import Launched, launch, memorise_spec, summary_in

pytestmark = pytest.mark.slow

STEPS = 200


@dataclass(frozen=True)
class Attempt:
    """What one start of the trainer left: its exit code, its part of the log, its
    termination message, and the checkpoints on disk when it had exited."""

    code: int
    log: str
    termination: RunSummary
    written: RunSummary
    """summary.json as the attempt left it."""
    checkpoints: list[tuple[int, Path, bool]]


def _launch(volumes: Path, folder: Path) -> Launched:
    spec = memorise_spec(
        "lora",
        ["adapter"],
        # Three examples a step: 200 steps are no whole number of epochs over the 8 examples.
        training={"maxSteps": STEPS, "loggingInterval": 20, "perDeviceBatchSize": 3},
        checkpoint={"intervalSteps": 20, "keep": 2},
    )
    return launch(spec, volumes, folder)


def _complete(folder: Path) -> list[int]:
    return [step for step, path in checkpoints(folder / "out" / "checkpoints") if (path / MARKER).exists()]


def _wait_for_checkpoint(folder: Path, process: Launched, after: int) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = _complete(folder)
        if done and max(done) > after:
            return max(done)
        assert process.poll() is None, (folder / "log.txt").read_text()[-3000:]
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def _attempt(volumes: Path, folder: Path, stop: signal.Signals | None, after: int = 0) -> Attempt:
    """Start the run in `folder`; with `stop`, send it once a complete checkpoint past step
    `after` exists. Returns what the attempt left before the next one overwrites it."""
    log = folder / "log.txt"
    start = len(log.read_text()) if log.exists() else 0
    process = _launch(volumes, folder)
    if stop is not None:
        _wait_for_checkpoint(folder, process, after)
        process.send_signal(stop)
    code = process.wait(timeout=300)
    termination = folder / "termination-log"
    return Attempt(
        code=code,
        log=log.read_text()[start:],
        termination=summary_in(folder, "termination-log") if termination.exists() else RunSummary(),
        written=summary_in(folder / "out") if (folder / "out" / "summary.json").exists() else RunSummary(),
        checkpoints=[(step, p, (p / MARKER).exists()) for step, p in checkpoints(folder / "out" / "checkpoints")],
    )


def _resumed_step(log: str) -> int:
    return int(log.split("resuming from ")[1].split("checkpoint-")[1].split()[0])


@pytest.fixture(scope="module")
def preempted(volumes: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Attempt, Attempt, Attempt, Attempt]:
    folder = tmp_path_factory.mktemp("preempted")
    killed = _attempt(volumes, folder, signal.SIGKILL)
    reached = max(step for step, _, complete in killed.checkpoints if complete)
    stopped = _attempt(volumes, folder, signal.SIGTERM, after=reached)
    finished = _attempt(volumes, folder, None)
    again = _attempt(volumes, folder, None)
    return killed, stopped, finished, again


def test_killed_run_resumes_from_the_newest_complete_checkpoint(
    preempted: tuple[Attempt, Attempt, Attempt, Attempt],
) -> None:
    killed, stopped, _, _ = preempted
    reached = max(step for step, _, complete in killed.checkpoints if complete)

    assert killed.code == -signal.SIGKILL
    assert "resuming from " in stopped.log, stopped.log[-3000:]
    assert _resumed_step(stopped.log) == reached


def test_sigterm_writes_a_checkpoint_and_exits_as_interrupted(
    preempted: tuple[Attempt, Attempt, Attempt, Attempt],
) -> None:
    _, stopped, finished, _ = preempted

    assert stopped.code == ExitCode.INTERRUPTED, stopped.log[-3000:]
    assert stopped.termination.reason == "Interrupted"
    stopped_at = int(str(stopped.termination.message).split("at step ")[1].split(";")[0])
    newest_step, newest, complete = stopped.checkpoints[0]
    assert newest_step == stopped_at < STEPS and complete

    assert finished.code == ExitCode.OK, finished.log[-3000:]
    assert f"resuming from {newest}" in finished.log
    metrics = summary_in(newest.parent.parent).metrics
    assert metrics is not None and metrics.steps == STEPS


def test_a_finished_run_started_again_trains_nothing_and_keeps_its_figures(
    preempted: tuple[Attempt, Attempt, Attempt, Attempt],
) -> None:
    _, _, finished, again = preempted

    assert again.code == ExitCode.OK, again.log[-3000:]
    assert "holds all 200 steps: nothing is left to train" in again.log
    assert again.checkpoints == finished.checkpoints and again.checkpoints[0][0] == STEPS
    before, after = finished.written, again.written
    assert before.metrics is not None and after.metrics is not None and before.history and after.history
    # The Trainer alone would resume the last epoch past its batches and train step 201.
    assert before.history[-1].epoch is not None and before.history[-1].epoch % 1 != 0
    assert after.metrics.steps == STEPS and after.metrics.train_loss == before.metrics.train_loss is not None
    assert after.metrics.tokens_per_second is None
    assert "every step was in the checkpoint" in str(after.message)
    # The history the report draws reaches back past every resume, to the run's first record:
    # all of it but the end-of-training record (train_runtime), logged after the last checkpoint.
    assert after.history == before.history[:-1] and before.history[0].step <= 20
    assert "train_runtime" in before.history[-1].logged()
