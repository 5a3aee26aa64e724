from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune_trainer.checkpoints import MARKER, newest_complete


def _checkpoint(folder: Path, step: int, complete: bool = True, state_step: int | None = None) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": state_step or step}))
    if complete:
        (path / MARKER).write_text("{}")
    return path


def test_newest_complete_checkpoint_wins(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 10)
    newest = _checkpoint(tmp_path, 30)
    _checkpoint(tmp_path, 20)

    assert newest_complete(tmp_path) == newest


def test_a_checkpoint_cut_off_mid_write_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    previous = _checkpoint(tmp_path, 10)
    _checkpoint(tmp_path, 20, complete=False)

    assert newest_complete(tmp_path) == previous
    assert "skipping checkpoint checkpoint-20: it was not completed" in caplog.text


def test_a_corrupted_checkpoint_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    previous = _checkpoint(tmp_path, 10)
    broken = _checkpoint(tmp_path, 20)
    (broken / "trainer_state.json").write_text("{not json")

    assert newest_complete(tmp_path) == previous
    assert "unreadable trainer state" in caplog.text


def test_no_checkpoint_means_a_fresh_start(tmp_path: Path) -> None:
    assert newest_complete(tmp_path / "missing") is None
