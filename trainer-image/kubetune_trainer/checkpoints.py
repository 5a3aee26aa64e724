"""Checkpoints that count only when complete, and the newest complete one to resume from.

The Trainer writes `checkpoint-<step>/`; after every rank has written its part, rank 0
writes the COMPLETE marker last. A folder without it (a crash during the write) is
skipped, as is one whose trainer state cannot be read.

A checkpoint is data from a volume that others may write to, and resuming unpickles its
optimizer, scheduler and random states. The Trainer loads its own files weights-only, but
DeepSpeed loads its shards with full unpickling, which runs whatever code a file names.
So every pickled file is read weights-only here first, and a checkpoint holding anything
else is refused before any of it is loaded for real.

Checkpoints bound for object storage are written into the pod's scratch all the same, and
copied to the bucket once complete (CheckpointMirror); an attempt in a new pod fetches the
newest complete copy back before it looks for a checkpoint to resume from.
"""

from __future__ import annotations

import fcntl
import json
import logging
import pickle
import re
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_pt_utils import safe_globals

from kubetune_trainer.errors import TrainerError, UnsafeCheckpoint
from kubetune_trainer.mounts import readable
from kubetune_trainer.ranks import every_rank
from kubetune_trainer.stores.s3 import Bucket

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
        # Not skipped as damaged: starting over would redo the steps it holds, and then fail
        # to write where it may not read.
        readable(path, f"checkpoint {path}")
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
    """Writes the COMPLETE marker into a checkpoint once every rank has saved it, then has the
    mirror, if any, copy it to object storage."""

    def __init__(self, folder: Path, is_main: bool, barrier: Any, mirror: CheckpointMirror | None = None) -> None:
        self.folder = folder
        self.is_main = is_main
        self.barrier = barrier
        self.mirror = mirror

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        target = self.folder / f"checkpoint-{state.global_step}"
        if self.mirror is not None and self.is_main:
            self.mirror.clear_from(state.global_step)  # before any pod starts uploading this step
        self.barrier()
        if self.is_main and target.is_dir():
            (target / MARKER).write_text(json.dumps({"step": state.global_step}) + "\n")
        if self.mirror is not None:
            self.mirror.send(target)


@dataclass(frozen=True)
class CheckpointMirror:
    """Checkpoints copied to object storage as `<prefix>/checkpoint-<step>/`, so that an
    attempt in a new pod, whose scratch starts empty, resumes.

    Ranks on other nodes write into their own pod's scratch: their RNG states and, under
    DeepSpeed or FSDP, their shards. So every pod's local rank 0 uploads what its pod holds;
    once every pod has, rank 0 uploads the marker, last, so that a cut-off upload never
    counts, and removes all but the newest `keep` complete checkpoints from the bucket. The
    marker is also the first object removed.

    The upload runs inside the save and every rank waits for it (0.1 s for the tests' LoRA
    checkpoints against a store on loopback, 2 s for 256 MiB): a checkpoint that SIGTERM
    asked for is then in the bucket before the process exits, and the ranks agree on what
    was copied. An upload must finish within the process group's timeout (30 minutes). A
    failed upload is logged and training goes on: the run itself is fine, only an attempt
    that restarts in a new pod resumes from an older checkpoint.
    """

    bucket: Bucket
    keep: int
    uploads: bool
    """Whether this process uploads its pod's files (local rank 0)."""
    is_main: bool
    """Whether this process writes the marker and prunes (rank 0)."""

    @property
    def uri(self) -> str:
        return self.bucket.location.uri

    def restore(self, folder: Path) -> None:
        """Before training: fetch the newest complete remote checkpoint into `folder`, unless
        one as new is there already. The first rank of a pod to take the lock fetches it and
        the others find it in place; every pod fetches its own copy, since pods on other
        nodes do not share this scratch. A copy that `newest_complete` skips (it says why) is
        removed and the next older one fetched; one without a marker is skipped.

        Raises TrainerError when the bucket cannot be read: better to stop before training
        than to train without a way to resume (it also checks the location and credentials
        before any work)."""
        folder.mkdir(parents=True, exist_ok=True)
        with _exclusive(folder / ".fetch.lock"):
            remote = self._remote()
            for step in sorted(remote, reverse=True):
                local = newest_complete(folder)
                if local is not None and _step(local) >= step:
                    return
                if MARKER not in remote[step]:
                    log.warning(
                        "skipping %s/checkpoint-%d: it was not completed (no %s marker)", self.uri, step, MARKER
                    )
                    continue
                fetched = self._fetch(step, remote[step], folder)
                try:
                    if newest_complete(folder) == fetched:
                        log.info("fetched checkpoint-%d from %s", step, self.uri)
                        return
                except UnsafeCheckpoint as error:
                    raise UnsafeCheckpoint(
                        f"{error}. It was fetched from {self.uri}/{fetched.name}: remove it there"
                    ) from None
                shutil.rmtree(fetched)

    def clear_from(self, step: int) -> None:
        """Rank 0, before `step` is uploaded: remove the remote checkpoints at that step or
        later. An earlier attempt left them and this run no longer follows them (it resumed
        from an older one, or could not read them); a checkpoint at the same step must not
        mix their files with the new ones."""

        def clear() -> None:
            for old, files in self._remote().items():
                if old >= step:
                    self._remove(old, files)

        self._attempt(clear, f"checkpoints of an earlier attempt, from step {step} on, were not removed")

    def send(self, checkpoint: Path) -> None:
        """Every rank, once the checkpoint is complete on disk: upload it, then the marker."""
        started = time.monotonic()
        remote = self.bucket.child(checkpoint.name)
        sent = True
        if self.uploads and checkpoint.is_dir():
            upload = partial(remote.upload, checkpoint, skip=(MARKER,))
            sent = self._attempt(
                upload, f"{checkpoint.name} was not copied, so an attempt in a new pod cannot resume from it"
            )
        everywhere = every_rank(sent)
        if self.uploads and not self.is_main:
            # Only rank 0's copies are rotated by the Trainer; the others would pile up.
            for _, path in checkpoints(checkpoint.parent)[self.keep :]:
                shutil.rmtree(path, ignore_errors=True)
        if not self.is_main or not (checkpoint / MARKER).is_file():
            return
        if not everywhere:
            if sent:  # this pod's own failure is logged already
                log.warning("%s/%s does not count: another pod could not upload its part", self.uri, checkpoint.name)
            return
        mark = partial(remote.put, checkpoint / MARKER, MARKER)
        if self._attempt(mark, f"{checkpoint.name} was copied but not marked complete, so it does not count"):
            log.info("copied %s to %s in %.2f s", checkpoint.name, self.uri, time.monotonic() - started)
            self._attempt(self._prune, "older checkpoints were not removed")

    def _prune(self) -> None:
        remote = self._remote()
        kept = [step for step in sorted(remote, reverse=True) if MARKER in remote[step]][: self.keep]
        for step, files in remote.items():
            if step not in kept:
                self._remove(step, files)

    def _remote(self) -> dict[int, list[str]]:
        """The remote checkpoints by step, each with its files (relative paths)."""
        found: dict[int, list[str]] = {}
        for key in self.bucket.objects():
            name, _, rest = key.partition("/")
            if (match := _NAME.match(name)) and rest:
                found.setdefault(int(match.group(1)), []).append(rest)
        return found

    def _fetch(self, step: int, files: list[str], folder: Path) -> Path:
        """Download a remote checkpoint beside `folder`'s and rename it into place: an
        interrupted download never looks like a checkpoint."""
        target = folder / f"checkpoint-{step}"
        incoming = folder / f".incoming-{target.name}"
        shutil.rmtree(incoming, ignore_errors=True)
        self.bucket.child(target.name).fetch(files, incoming)
        shutil.rmtree(target, ignore_errors=True)  # an incomplete or unreadable local copy
        incoming.rename(target)
        return target

    def _remove(self, step: int, files: list[str]) -> None:
        """The marker first: a checkpoint half removed no longer counts."""
        self.bucket.child(f"checkpoint-{step}").delete(sorted(files, key=lambda file: file != MARKER))

    @staticmethod
    def _attempt(action: Callable[[], object], failure: str) -> bool:
        try:
            action()
        except (TrainerError, OSError) as error:
            log.warning("%s (%s); training goes on", failure, error)
            return False
        return True


def _step(checkpoint: Path) -> int:
    return int(checkpoint.name.removeprefix("checkpoint-"))


@contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """One process of a pod at a time (they share its scratch); released when the process ends."""
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
