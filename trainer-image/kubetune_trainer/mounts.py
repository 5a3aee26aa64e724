"""Paths under the folders a pod mounts (claims, ConfigMaps, Secrets, its scratch space).

The spec and the stores it names give paths relative to a mount; `inside` is the one place
they are joined onto it, so no path read or written by the trainer leads outside the
volume the spec names, whether by a '..' segment or by a symbolic link on the volume.
"""

from __future__ import annotations

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
