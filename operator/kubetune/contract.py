"""What the operator and the trainer agree on: where the pod's files are, which
environment variables carry runtime facts, and what the trainer's exit codes mean.

Both sides import this module, so a path or a code is written once.
"""

from __future__ import annotations

import enum
import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ExitCode(enum.IntEnum):
    """The trainer's exit status. The operator's podFailurePolicy reads these: invalid
    input, out-of-memory and a full disk are not retried (the next attempt would fail the
    same way, after redoing the steps since the newest checkpoint); anything else is, from
    the newest checkpoint."""

    OK = 0
    FAILED = 1
    INVALID_SPEC = 41
    INVALID_DATA = 42
    OUT_OF_MEMORY = 43
    INTERRUPTED = 44
    """Stopped by SIGTERM (preemption, eviction, suspend) after writing a checkpoint."""
    DISK_FULL = 45
    """A write found no space (ENOSPC) or an exhausted quota (EDQUOT): a person must make room."""

    @property
    def retryable(self) -> bool:
        return self in {ExitCode.FAILED, ExitCode.INTERRUPTED}


class Env(enum.StrEnum):
    """Environment variables the trainer reads, besides torchrun's own."""

    SPEC = "KUBETUNE_SPEC"
    """Path of the validated spec (JSON, camelCase), mounted from the job's ConfigMap."""
    JOB_NAME = "KUBETUNE_JOB_NAME"
    NAMESPACE = "KUBETUNE_NAMESPACE"
    VOLUMES = "KUBETUNE_VOLUMES"
    """Folder where each PersistentVolumeClaim of the spec is mounted, by claim name."""
    CONFIGMAPS = "KUBETUNE_CONFIGMAPS"
    """Folder where each ConfigMap of the spec is mounted, by name."""
    SECRETS = "KUBETUNE_SECRETS"
    """Folder where each Secret of the spec is mounted, by name (one file per key)."""
    WORK = "KUBETUNE_WORK"
    """Scratch space of the pod: downloads, tokenised data, local checkpoints."""
    OUTPUT = "KUBETUNE_OUTPUT"
    """Overrides the spec's output destination with a local folder (kubetune run --output)."""
    TERMINATION_LOG = "KUBETUNE_TERMINATION_LOG"
    PROGRESS_PORT = "KUBETUNE_PROGRESS_PORT"
    MODEL_CACHE = "KUBETUNE_MODEL_CACHE"
    """Shared cache of downloaded models (the installation's model-cache claim); else in WORK."""
    DATASET_ALLOWED_NETWORKS = "KUBETUNE_DATASET_ALLOWED_NETWORKS"
    """Networks (comma-separated CIDRs) dataset URLs may reach although they are private;
    the operator passes its own setting of the same name."""


DEFAULT_PATHS = {
    Env.SPEC: "/etc/kubetune/spec.json",
    Env.VOLUMES: "/mnt/kubetune/volumes",
    Env.CONFIGMAPS: "/mnt/kubetune/configmaps",
    Env.SECRETS: "/var/run/secrets/kubetune",
    Env.WORK: "/mnt/kubetune/work",
    Env.TERMINATION_LOG: "/dev/termination-log",
    Env.MODEL_CACHE: "/mnt/kubetune/model-cache",
}

DEFAULT_PROGRESS_PORT = 9090
TERMINATION_MESSAGE_LIMIT = 4096
"""Kubernetes keeps at most this many bytes of a container's termination message."""


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated CIDRs (a bare address is a network of one address). Raises ValueError
    naming the entry that is not one."""
    networks = []
    for entry in (item.strip() for item in text.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry))
        except ValueError as error:
            raise ValueError(f"{entry!r} is not a network in CIDR notation ({error})") from None
    return tuple(networks)


HEADLINE_FIGURES = ("steps", "trainLoss", "evalLoss", "tokensPerSecond")
"""The figures of a finished run that the operator's status shows as its final progress: the
trainer keeps them in the termination message when the rest of its metrics do not fit."""


@dataclass(frozen=True)
class FinalFigures:
    """The final figures of a run, as the trainer's summary (the termination message) carries
    them under `metrics`: the steps done, the last training loss, the final evaluation loss,
    and every other number by the trainer's name (the task's own, such as evalAccuracy or
    perplexity, and tokensPerSecond)."""

    steps: int | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    tokens_per_second: float | None = None
    numbers: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> FinalFigures:
        """What the summary reports; figures that are absent or not finite numbers are left out
        (a summary cut to fit the 4096 bytes may have lost them all)."""
        metrics = summary.get("metrics")
        if not isinstance(metrics, Mapping):
            return cls()
        numbers = {
            str(name): float(value)
            for name, value in metrics.items()
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        }
        steps = numbers.get("steps")
        return cls(
            steps=int(steps) if steps is not None and steps >= 0 else None,
            train_loss=numbers.get("trainLoss"),
            eval_loss=numbers.get("evalLoss"),
            tokens_per_second=numbers.get("tokensPerSecond"),
            numbers=numbers,
        )
