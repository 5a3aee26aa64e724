"""Checkpoints that count only when complete, and the newest complete one to resume from.

The Trainer writes `checkpoint-<step>/`; after every rank has written its part, rank 0
writes the COMPLETE marker last. A folder without it (a crash during the write) is
skipped, as is one whose trainer state cannot be read.

A checkpoint is data from a volume that others may write to, and resuming unpickles its
optimizer, scheduler and random states. The Trainer loads its own files weights-only, but
DeepSpeed loads its shards with full unpickling, which runs whatever code a file names.
So every pickled file is read weights-only here first, and a checkpoint holding anything
else is refused before any of it is loaded for real.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_pt_utils import safe_globals

from kubetune_trainer.errors import UnsafeCheckpoint

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
_NAME = re.compile(r"^checkpoint-(\d+)$")
PICKLED = (".pt", ".pth", ".bin")
NEVER_LOADED = {"training_args.bin"}
"""Written by the Trainer for people to read; nothing loads it back on resume."""
DEEPSPEED_CLASSES = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)
"""Plain-data classes DeepSpeed pickles into its optimizer shards, besides tensors."""
_REFUSED = re.compile(r"WeightsUnpickler error: (.+?)(?: was not an allowed global|\.\s|\n|$)")


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Checkpoint folders by step, newest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return sorted(found, reverse=True)


def newest_complete(folder: Path) -> Path | None:
    """The checkpoint to resume from. Raises UnsafeCheckpoint when it holds pickled objects
    that are not plain data."""
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
        unreadable = _unreadable_pickle(path)
        if unreadable is not None:
            log.warning("skipping checkpoint %s: %s", path.name, unreadable)
            continue
        return path
    return None


def _unreadable_pickle(checkpoint: Path) -> str | None:
    """Load every pickled file of a checkpoint weights-only (tensors memory-mapped, not read).
    A file naming anything else raises UnsafeCheckpoint; a damaged one is reported."""
    files = sorted(p for p in checkpoint.rglob("*") if p.suffix in PICKLED and p.name not in NEVER_LOADED)
    # DeepSpeed's classes are allowed under their names without importing DeepSpeed: the
    # check only needs to know the file holds nothing else.
    allowed: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [(_Inert, n) for n in DEEPSPEED_CLASSES]
    for file in files:
        try:
            with safe_globals(), torch.serialization.safe_globals(allowed):
                torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
        except pickle.UnpicklingError as error:
            found = _REFUSED.search(str(error))
            raise UnsafeCheckpoint(
                f"{file.relative_to(checkpoint.parent)}: {found.group(1) if found else 'not plain data'}; the "
                "checkpoint was not loaded, since unpickling it could run code. Remove the folder "
                f"{checkpoint} to resume from an older checkpoint, or the whole checkpoint folder to start over"
            ) from None
        except (OSError, RuntimeError, EOFError, ValueError) as error:
            return f"{file.name} cannot be read ({error})"
    return None


class _Inert:
    """Stands in for an allowed class while a file is checked: built from the file's data and
    dropped, running nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


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
