"""A full disk, told apart from other failures and reported with where and how much is left.

Writes fail in several voices when a volume is full: Python's OSError (ENOSPC, or EDQUOT
for a spent quota), safetensors' error quoting the OS error, and torch.save's C++ writer,
which loses the cause ("unexpected pos ..."). The last is taken for a full disk only when
one of the folders the trainer writes to is nearly out of space.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from kubetune_trainer.errors import DiskFull

WHAT = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is spent"}
SIGNS = {
    errno.ENOSPC: ("No space left on device", f"os error {errno.ENOSPC})"),
    errno.EDQUOT: ("Disk quota exceeded", f"os error {errno.EDQUOT})"),
}
TORCH_WRITE_FAILED = ("PytorchStreamWriter failed writing", "unexpected pos")
NEARLY_FULL = 64 * 1024**2
"""Free bytes under which a write that failed without a cause is put down to the disk."""

Usage = Callable[[Path], Any]
"""shutil.disk_usage, or a stand-in with the same (total, used, free) answer."""


def disk_full(error: BaseException, folders: Sequence[Path], usage: Usage = shutil.disk_usage) -> DiskFull | None:
    """A DiskFull naming the folder and its free space when `error` (or what caused it) is a
    full disk or a spent quota; None when it is something else. `folders` are where the
    trainer writes (checkpoints, outputs, scratch), the first the likeliest."""
    chain = list(_chain(error))
    for cause in chain:
        if isinstance(cause, OSError) and cause.errno in WHAT:
            places = [Path(cause.filename)] if cause.filename else folders
            return no_space(places, cause.errno, cause, usage)
    for cause in chain:
        for code, signs in SIGNS.items():
            if any(sign in str(cause) for sign in signs):
                return no_space(folders, code, cause, usage)
    if any(sign in str(cause) for cause in chain for sign in TORCH_WRITE_FAILED):
        nearly_full = [f for f in _existing(folders) if _free(f, usage) < NEARLY_FULL]
        if nearly_full:
            return no_space(nearly_full, errno.ENOSPC, error, usage)
    return None


def no_space(places: Sequence[Path], code: int, error: BaseException, usage: Usage = shutil.disk_usage) -> DiskFull:
    """DiskFull for a write under one of `places` (the first that exists wins among those
    with the least space left)."""
    existing = _existing(places)
    what = WHAT.get(code, "no space left on the device")
    if not existing:
        return DiskFull(f"{what}: {_describe(error)}")
    folder = min(existing, key=lambda f: _free(f, usage))
    total, _, free = usage(folder)[:3]
    return DiskFull(
        f"{what} at {folder} ({_size(free)} free of {_size(total)}): {_describe(error)}; make room there "
        "(a larger volume, or fewer checkpoints kept with checkpoint.keep) and run the job again: it "
        "resumes from the newest complete checkpoint"
    )


def _chain(error: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _existing(places: Iterable[Path]) -> list[Path]:
    """The nearest existing folder of each place, once each, in order."""
    found: dict[Path, None] = {}
    for place in places:
        folder = place if place.is_dir() else place.parent
        while not folder.is_dir() and folder != folder.parent:
            folder = folder.parent
        if folder.is_dir():
            found.setdefault(folder, None)
    return list(found)


def _free(folder: Path, usage: Usage) -> int:
    return int(usage(folder)[2])


def _describe(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text if isinstance(error, OSError) else f"{type(error).__name__}: {text}"


def _size(count: float) -> str:
    if count < 1024:
        return f"{count:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        count /= 1024
        if count < 1024:
            return f"{count:.1f} {unit}"
    return f"{count / 1024:.1f} TiB"
