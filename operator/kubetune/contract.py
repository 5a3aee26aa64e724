"""What the operator and the trainer agree on: where the pod's files are, which
environment variables carry runtime facts, and what the trainer's exit codes mean.

Both sides import this module, so a path or a code is written once.
"""

from __future__ import annotations

import enum
import ipaddress

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
    OUTCOME_SHOWN_BY_CALLER = "KUBETUNE_OUTCOME_SHOWN_BY_CALLER"
    """Set by `kubetune run` for the processes it starts through torchrun: it prints the
    outcome from the summary itself, so the ranks do not log a failure too."""
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
MODEL_FACTS_KEY = "modelFacts"
"""Where the preflight's summary carries what it read of a model that is not a preset
(kubetune.api.facts.ModelFacts, camelCase), for sizing `accelerators: auto`."""


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
