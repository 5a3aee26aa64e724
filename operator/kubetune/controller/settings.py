"""Operator settings, from environment variables the Helm chart sets, read once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from kubetune import __version__
from kubetune.contract import DEFAULT_PROGRESS_PORT

RENDEZVOUS_PORT = 29500


@dataclass(frozen=True)
class Settings:
    trainer_image: str = f"ghcr.io/kubetune/trainer:{__version__}"
    """Default trainer image for jobs with accelerators (CUDA)."""
    trainer_cpu_image: str = f"ghcr.io/kubetune/trainer:{__version__}-cpu"
    """Default trainer image for CPU-only jobs and the preflight."""
    progress_port: int = DEFAULT_PROGRESS_PORT
    progress_interval_seconds: float = 10.0
    default_cpu: str = "4"
    default_memory: str = "16Gi"
    allowed_images: tuple[str, ...] = ()
    """Image prefixes trainer pods may use; empty allows any."""
    allowed_service_accounts: tuple[str, ...] = ()
    """Service accounts trainer pods may use; empty allows only the namespace default."""
    namespaces: tuple[str, ...] = field(default_factory=tuple)
    """Namespaces watched; empty watches all."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()

        def listed(name: str) -> tuple[str, ...]:
            return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())

        return cls(
            trainer_image=env.get("KUBETUNE_TRAINER_IMAGE", defaults.trainer_image),
            trainer_cpu_image=env.get("KUBETUNE_TRAINER_CPU_IMAGE", defaults.trainer_cpu_image),
            progress_port=int(env.get("KUBETUNE_PROGRESS_PORT", defaults.progress_port)),
            progress_interval_seconds=float(env.get("KUBETUNE_PROGRESS_INTERVAL", defaults.progress_interval_seconds)),
            default_cpu=env.get("KUBETUNE_DEFAULT_CPU", defaults.default_cpu),
            default_memory=env.get("KUBETUNE_DEFAULT_MEMORY", defaults.default_memory),
            allowed_images=listed("KUBETUNE_ALLOWED_IMAGES"),
            allowed_service_accounts=listed("KUBETUNE_ALLOWED_SERVICE_ACCOUNTS"),
            namespaces=listed("KUBETUNE_NAMESPACES"),
        )
