"""A full disk ends a run as DiskFull (its own exit code, not retried), saying where and how
much space is left, whichever library's write ran into it."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from kubetune.contract import ExitCode
from kubetune_trainer.checkpoints import MARKER, CompletionMarker
from kubetune_trainer.disk import NEARLY_FULL, disk_full
from kubetune_trainer.errors import DiskFull
from kubetune_trainer.main import run

from .conftest import memorise_spec, runtime_in

GIB = 1024**3


def _usage(free: int) -> Any:
    """A 20 GiB file system with `free` bytes left, as shutil.disk_usage answers."""
    return lambda folder: (20 * GIB, 20 * GIB - free, free)


def _no_space(filename: Path | None = None) -> OSError:
    """What Python raises for a write into a full file system."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *([str(filename)] if filename else []))


def test_a_write_into_a_full_file_system_is_a_full_disk(tmp_path: Path) -> None:
    found = disk_full(_no_space(), [tmp_path / "missing", tmp_path], _usage(0))

    assert isinstance(found, DiskFull) and found.exit_code is ExitCode.DISK_FULL
    assert str(found).startswith(f"no space left on the device at {tmp_path} (0 B free of 20.0 GiB): [Errno 28]")
    assert "checkpoint.keep" in str(found)


def test_the_file_the_error_names_says_where(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints" / "checkpoint-40"
    folder.mkdir(parents=True)
    found = disk_full(_no_space(folder / "optimizer.pt"), [tmp_path / "elsewhere"], _usage(12 * 1024**2))

    assert str(found).startswith(f"no space left on the device at {folder} (12.0 MiB free of 20.0 GiB)")


def test_a_spent_quota_is_a_full_disk(tmp_path: Path) -> None:
    found = disk_full(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), [tmp_path], _usage(5 * GIB))

    assert str(found).startswith(f"the disk quota is spent at {tmp_path} (5.0 GiB free of 20.0 GiB)")


def test_safetensors_and_wrapped_errors_are_recognised(tmp_path: Path) -> None:
    from safetensors import SafetensorError

    written = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    try:
        try:
            raise _no_space()
        except OSError as cause:
            raise RuntimeError("saving the adapter failed") from cause
    except RuntimeError as wrapped:
        chained = wrapped

    assert "SafetensorError: Error while serializing" in str(disk_full(written, [tmp_path], _usage(0)))
    assert "[Errno 28]" in str(disk_full(chained, [tmp_path], _usage(0)))


def test_torch_saves_failed_write_counts_only_when_the_disk_is_nearly_full(tmp_path: Path) -> None:
    """torch.save's writer drops the cause ("unexpected pos"); the free space decides."""
    error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    assert disk_full(error, [tmp_path], _usage(NEARLY_FULL - 1)) is not None
    assert disk_full(error, [tmp_path], _usage(10 * GIB)) is None


@pytest.mark.parametrize(
    "error",
    [ValueError("bad value"), OSError(errno.EACCES, "Permission denied"), RuntimeError("NCCL timeout")],
)
def test_other_failures_are_not_a_full_disk(error: Exception, tmp_path: Path) -> None:
    assert disk_full(error, [tmp_path], _usage(0)) is None


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
