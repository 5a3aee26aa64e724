"""A full disk met by a real run ends it as DiskFull, saying where and how much space is left."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.contract import ExitCode
from kubetune_trainer.checkpoints import MARKER, CompletionMarker
from kubetune_trainer.main import run
from tests.unit.trainer.test_disk import _no_space

from .conftest import memorise_spec, runtime_in


def test_a_checkpoint_that_meets_a_full_disk_ends_the_run_as_disk_full(
    volumes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny real run whose first checkpoint cannot be completed: the marker's write finds
    no space, as it would on a full volume."""

    def into_a_full_disk(self: CompletionMarker, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        marker = self.folder / f"checkpoint-{state.global_step}" / MARKER
        raise _no_space(marker)

    monkeypatch.setattr(CompletionMarker, "on_save", into_a_full_disk)
    runtime = runtime_in(volumes, tmp_path)
    spec = memorise_spec("lora", ["adapter"], training={"maxSteps": 2}, checkpoint={"intervalSteps": 1})

    code, summary = run(spec, runtime)

    assert code is ExitCode.DISK_FULL
    written = json.loads((tmp_path / "termination-log").read_text())
    assert written["reason"] == summary.reason == "DiskFull"
    message = written["message"]
    assert message.startswith(f"no space left on the device at {tmp_path / 'out' / 'checkpoints' / 'checkpoint-1'} (")
    assert " free of " in message and "[Errno 28] No space left on device" in message
