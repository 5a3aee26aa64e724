"""`kubetune run --nproc 2` goes through torchrun: the failure is still said once, in
kubetune's words, without torchrun's traceback of the rank that stopped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ...unit.test_run_failures import MANIFEST

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_dataset_defect_with_two_processes_is_said_once(tmp_path: Path) -> None:
    manifest = tmp_path / "job.yaml"
    manifest.write_text(MANIFEST)
    command = [sys.executable, "-m", "kubetune", "run", str(manifest), "--volumes", str(tmp_path / "v"), "--nproc", "2"]

    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=os.environ | {"OMP_NUM_THREADS": "1"}
    )

    output = done.stdout + done.stderr
    assert done.returncode == 42, output
    assert [line for line in output.splitlines() if "unknown role 'tool'" in line] == [
        "DatasetInvalid: facts.jsonl line 2: messages[0]: unknown role 'tool'; use one of system, user, assistant"
    ], output
    assert "Traceback" not in output and "ChildFailedError" not in output
