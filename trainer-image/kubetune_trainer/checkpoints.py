"""Checkpoints that count only when complete, and the newest complete one to resume from.

The Trainer writes `checkpoint-<step>/`; after every rank has written its part, rank 0
writes the COMPLETE marker last. A folder without it (a crash during the write) is
skipped, as is one whose trainer state cannot be read.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Checkpoint folders by step, newest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return sorted(found, reverse=True)


def newest_complete(folder: Path) -> Path | None:
    for step, path in checkpoints(folder):
        if not (path / MARKER).is_file():
            log.warning("skipping checkpoint %s: it was not completed (no %s marker)", path.name, MARKER)
            continue
        try:
            state = json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError) as error:
            log.warning("skipping checkpoint %s: unreadable trainer state (%s)", path.name, error)
            continue
        if state.get("global_step") != step:
            log.warning("skipping checkpoint %s: its state says step %s", path.name, state.get("global_step"))
            continue
        return path
    return None


class CompletionMarker(TrainerCallback):
    """Writes the COMPLETE marker into a checkpoint once every rank has saved it."""

    def __init__(self, folder: Path, is_main: bool, barrier: Any) -> None:
        self.folder = folder
        self.is_main = is_main
        self.barrier = barrier

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.barrier()
        if self.is_main:
            target = self.folder / f"checkpoint-{state.global_step}"
            if target.is_dir():
                (target / MARKER).write_text(json.dumps({"step": state.global_step}) + "\n")
