"""A run killed mid-way resumes from its newest complete checkpoint and ends at the same
step count; SIGTERM (what Kubernetes sends on preemption) checkpoints before exiting."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from kubetune.contract import ExitCode
from kubetune_trainer.checkpoints import MARKER, checkpoints

from .conftest import launch, memorise_spec, summary_in

pytestmark = pytest.mark.slow

STEPS = 300


def _launch(volumes: Path, folder: Path) -> subprocess.Popen[bytes]:
    spec = memorise_spec(
        "lora",
        ["adapter"],
        training={"maxSteps": STEPS, "loggingInterval": 20},
        checkpoint={"intervalSteps": 20, "keep": 2},
    )
    return launch(spec, volumes, folder)


def _wait_for_checkpoint(folder: Path, process: subprocess.Popen[bytes], at_least: int) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = [step for step, path in checkpoints(folder / "out" / "checkpoints") if (path / MARKER).exists()]
        if done and max(done) >= at_least:
            return max(done)
        assert process.poll() is None, (folder / "log.txt").read_text()[-3000:]
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def _finish(volumes: Path, folder: Path) -> tuple[int, str]:
    process = _launch(volumes, folder)
    assert process.wait(timeout=300) == ExitCode.OK, (folder / "log.txt").read_text()[-3000:]
    metrics = summary_in(folder / "out").metrics
    assert metrics is not None and metrics.steps is not None
    return metrics.steps, (folder / "log.txt").read_text()


def test_killed_run_resumes_from_the_newest_complete_checkpoint(volumes: Path, tmp_path: Path) -> None:
    process = _launch(volumes, tmp_path)
    reached = _wait_for_checkpoint(tmp_path, process, at_least=40)
    process.kill()
    process.wait()

    steps, log = _finish(volumes, tmp_path)

    assert steps == STEPS
    resumed = int(log.split("resuming from ")[1].split("checkpoint-")[1].split()[0])
    assert resumed >= reached


def test_sigterm_writes_a_checkpoint_and_exits_as_interrupted(volumes: Path, tmp_path: Path) -> None:
    process = _launch(volumes, tmp_path)
    _wait_for_checkpoint(tmp_path, process, at_least=20)
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=120)

    assert code == ExitCode.INTERRUPTED
    summary = summary_in(tmp_path, "termination-log")
    assert summary.reason == "Interrupted"
    stopped_at = int(str(summary.message).split("at step ")[1].split(";")[0])
    newest = checkpoints(tmp_path / "out" / "checkpoints")[0]
    assert newest[0] == stopped_at and (newest[1] / MARKER).exists()

    steps, log = _finish(volumes, tmp_path)
    assert steps == STEPS
    assert f"resuming from {newest[1]}" in log
