"""A pod's exit code is the trainer's, not torchrun's: the podFailurePolicy and the operator's
status read it to tell a failure worth a retry from one that is not (`ExitCode`). Plain torchrun
exits 1 whatever its worker returned, so an invalid spec, an OOM or a full disk was retried."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from kubetune.contract import ExitCode, Launch
from kubetune_trainer.launch import torchrun_command

pytestmark = [pytest.mark.integration]


@pytest.mark.parametrize("code", [ExitCode.INVALID_SPEC, ExitCode.OUT_OF_MEMORY, ExitCode.DISK_FULL])
def test_the_launchers_torchrun_exits_with_the_failed_ranks_code(code: ExitCode, tmp_path: Path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(f"import sys\nsys.exit({int(code)})\n")
    # The pod's command with the trainer module swapped for a worker that only fails.
    command = [*_pods_torchrun()[:-2], str(worker)]

    finished = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    assert finished.returncode == code, finished.stderr[-2000:]
    assert "Traceback" not in finished.stderr


def test_a_rank_that_succeeds_exits_zero(tmp_path: Path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text("print('trained')\n")
    command = [*_pods_torchrun()[:-2], str(worker)]

    finished = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "trained" in finished.stdout


def _pods_torchrun() -> list[str]:
    """The command a one-process pod's launcher hands over to, on a free loopback port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return torchrun_command(Launch.read({"KUBETUNE_MASTER_PORT": str(port)}), "0")
