"""Paths under the folders a pod mounts (claims, ConfigMaps, Secrets, its scratch space).

The spec and the stores it names give paths relative to a mount; `inside` is the one place
they are joined onto it, so no path read or written by the trainer leads outside the
volume the spec names, whether by a '..' segment or by a symbolic link on the volume.
`readable` says which file of a volume the trainer may not read, and why, before a
library reports it as a missing file.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from kubetune_trainer.errors import InvalidSpec, TrainerError


def inside(base: Path, relative: str, what: str, error: type[TrainerError] = InvalidSpec) -> Path:
    """`relative` under `base`, the folder a volume is mounted at (a leading "/" is the
    volume's root). Raises `error` when the path would lead outside `base`: through a '..'
    segment, or, as far as the path exists, through a symbolic link that resolves outside
    it. `base` itself may be a link (kubetune run maps a claim to a folder that way)."""
    if ".." in relative.split("/"):
        raise error(f"{what} {relative!r} leads outside {base} (a '..' segment); refused")
    target = base / relative.lstrip("/")
    root, resolved = base.resolve(), target.resolve()
    if resolved != root and root not in resolved.parents:
        raise error(f"{what} {relative!r} leads outside {base} (a symbolic link to {resolved}); refused")
    return target


def readable(path: Path, what: str, error: type[TrainerError] = InvalidSpec) -> Path:
    """`path`, once every file in it (a file, or a folder and everything under it) opens for
    reading. Raises `error` naming the first file or folder this process may not read, its
    owner and mode: a claim written by another user is otherwise reported by the libraries
    that read it as a file that does not exist. A path that does not exist passes (the
    caller says what is missing)."""
    try:
        if path.is_dir():
            for folder, _, names in os.walk(path, onerror=_raise):
                for name in names:
                    _open(Path(folder) / name)
        elif path.is_file():
            _open(path)
    except PermissionError as denied:
        raise error(f"{what}: {permission_denied(Path(denied.filename or path))}") from None
    return path


def writable(folder: Path, what: str) -> Path:
    """`folder`, created if need be, once this process has created a file in it. Raises
    InvalidSpec when the volume is read-only or its permissions refuse the trainer: a run
    finds that out otherwise at its first checkpoint, or at the end."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".kubetune-write-check-"):
            pass
    except PermissionError as denied:
        refused = Path(denied.filename) if denied.filename else folder
        where = folder if refused.parent == folder else refused  # the probe file's name says nothing
        raise InvalidSpec(f"{what}: {permission_denied(where, 'write')}") from None
    except OSError as error:
        if error.errno != errno.EROFS:
            raise
        raise InvalidSpec(f"{what}: cannot write {folder}: the volume is mounted read-only") from None
    return folder


def permission_denied(path: Path, doing: str = "read") -> str:
    """Why this process may not read (or write) `path`, in words a person can act on."""
    return (
        f"cannot {doing} {path}: permission denied ({_whose(path)}; the trainer runs as uid {os.getuid()} "
        f"gid {os.getgid()}): give the trainer's user {doing} access to it"
    )


def access_denied(error: BaseException) -> InvalidSpec | None:
    """The failure an error stands for when a file's permissions caused it (the error is a
    PermissionError, or one is among its causes): not retried, since the next attempt would
    meet the same permissions. None for any other error."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen and not isinstance(cause, PermissionError):
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    if not isinstance(cause, PermissionError) or not cause.filename:
        return None
    path = Path(cause.filename)
    return InvalidSpec(permission_denied(path, "read" if _unreadable(path) else "write"))


def _whose(path: Path) -> str:
    """The owner and mode of `path`, or of the nearest folder above it, where it does not exist."""
    for candidate in (path, *path.parents):
        try:
            facts = candidate.stat()
        except FileNotFoundError:
            continue
        except OSError:
            break
        where = "" if candidate == path else f"{candidate} "
        return f"{where}owned by uid {facts.st_uid} gid {facts.st_gid}, mode {stat.S_IMODE(facts.st_mode):04o}"
    return "a folder above it cannot be searched"


def _unreadable(path: Path) -> bool:
    try:
        return path.exists() and not os.access(path, os.R_OK)
    except OSError:
        return True


def _open(file: Path) -> None:
    if file.is_file():  # not a FIFO or a device, which an open would wait on
        with file.open("rb"):
            pass


def _raise(error: OSError) -> None:
    raise error


def open_to_readers(folder: Path) -> None:
    """Give the files under `folder` the read bits the process's umask allows. Some writers
    (safetensors through transformers 5) create weights with mode 0600, so a serving pod or
    a person running as another user could not read an output the job reported as done."""
    mask = os.umask(0)
    os.umask(mask)
    readers = 0o444 & ~mask
    for path in (folder, *folder.rglob("*")):
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        wanted = mode | readers | (0o111 & ~mask if path.is_dir() else 0)
        if wanted != mode:
            path.chmod(wanted)
