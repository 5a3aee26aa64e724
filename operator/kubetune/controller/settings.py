"""Operator settings, from environment variables the Helm chart sets, read once."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubetune import __version__
from kubetune.contract import DEFAULT_PROGRESS_PORT, DEFAULT_RENDEZVOUS_PORT, Env, Network, parse_networks

RENDEZVOUS_PORT = DEFAULT_RENDEZVOUS_PORT


class SettingsError(ValueError):
    """An operator setting that cannot be read; the message names the variable."""


@dataclass(frozen=True)
class AcceleratorProfile:
    """A kind of accelerator node the cluster offers, for sizing `accelerators: auto` jobs."""

    name: str
    resource: str
    """Extended resource name, e.g. nvidia.com/gpu."""
    memory_gib: float
    """Memory of one device."""
    per_node: int
    """Devices on one node."""
    node_selector: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, item: Any, where: str) -> AcceleratorProfile:
        if not isinstance(item, dict):
            raise SettingsError(f"{where}: expected an object, found {type(item).__name__}")
        try:
            profile = cls(
                name=str(item["name"]),
                resource=str(item["resource"]),
                memory_gib=float(item["memoryGiB"]),
                per_node=int(item["perNode"]),
                node_selector={str(k): str(v) for k, v in (item.get("nodeSelector") or {}).items()},
            )
        except KeyError as missing:
            raise SettingsError(f"{where}: missing {missing}") from None
        except (TypeError, ValueError) as error:
            raise SettingsError(f"{where}: {error}") from None
        if profile.memory_gib <= 0 or profile.per_node < 1:
            raise SettingsError(f"{where}: memoryGiB must be positive and perNode at least 1")
        return profile


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
    accelerator_profiles: tuple[AcceleratorProfile, ...] = ()
    """Accelerator nodes to size `accelerators: auto` jobs for, tried in order."""
    model_cache_claim: str | None = None
    """PersistentVolumeClaim mounted in trainer pods as the shared cache of downloaded models."""
    default_queue: str | None = None
    """Kueue LocalQueue for jobs that name none."""
    dataset_allowed_networks: tuple[Network, ...] = ()
    """Private networks dataset URLs may reach (an in-cluster mirror); empty refuses them all."""
    log_level: str = "info"
    log_format: str = "text"
    metrics_port: int = 8080
    health_port: int = 8081
    error_backoff_seconds: float = 5.0
    """Pause after a failed API call that names no Retry-After."""
    api_workers: int = 32
    """Connections open at once to the API server and to rank-0 pods, shared by every job."""
    resync_seconds: float = 300.0
    """Longest a job goes without its children read afresh from the API (between two reads the
    keeper plans from what the watch delivered), and a job that is not running without a pass."""
    kept_failed_attempts: int = 3
    """Jobs of failed attempts kept (their pods stopped, their logs readable) while a job goes
    on; the oldest go first. They go with the job, or when its ttlSecondsAfterFinished runs out."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()

        def number(name: str, default: float, kind: type[int] | type[float]) -> Any:
            text = env.get(name)
            if text is None:
                return default
            try:
                return kind(text)
            except ValueError:
                raise SettingsError(f"{name}={text!r} is not a {kind.__name__}") from None

        def listed(name: str) -> tuple[str, ...]:
            return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())

        return cls(
            trainer_image=env.get("KUBETUNE_TRAINER_IMAGE", defaults.trainer_image),
            trainer_cpu_image=env.get("KUBETUNE_TRAINER_CPU_IMAGE", defaults.trainer_cpu_image),
            progress_port=number("KUBETUNE_PROGRESS_PORT", defaults.progress_port, int),
            progress_interval_seconds=number("KUBETUNE_PROGRESS_INTERVAL", defaults.progress_interval_seconds, float),
            default_cpu=env.get("KUBETUNE_DEFAULT_CPU", defaults.default_cpu),
            default_memory=env.get("KUBETUNE_DEFAULT_MEMORY", defaults.default_memory),
            allowed_images=listed("KUBETUNE_ALLOWED_IMAGES"),
            allowed_service_accounts=listed("KUBETUNE_ALLOWED_SERVICE_ACCOUNTS"),
            namespaces=listed("KUBETUNE_NAMESPACES"),
            accelerator_profiles=_profiles(env.get("KUBETUNE_ACCELERATOR_PROFILES", "")),
            model_cache_claim=env.get("KUBETUNE_MODEL_CACHE_PVC") or None,
            default_queue=env.get("KUBETUNE_DEFAULT_QUEUE") or None,
            dataset_allowed_networks=_networks(env.get(Env.DATASET_ALLOWED_NETWORKS, "")),
            log_level=env.get("KUBETUNE_LOG_LEVEL", defaults.log_level).lower(),
            log_format=env.get("KUBETUNE_LOG_FORMAT", defaults.log_format).lower(),
            metrics_port=number("KUBETUNE_METRICS_PORT", defaults.metrics_port, int),
            health_port=number("KUBETUNE_HEALTH_PORT", defaults.health_port, int),
            resync_seconds=_positive(
                "KUBETUNE_RESYNC_SECONDS", number("KUBETUNE_RESYNC_SECONDS", defaults.resync_seconds, float)
            ),
            kept_failed_attempts=_at_least_zero(
                "KUBETUNE_KEPT_FAILED_ATTEMPTS",
                number("KUBETUNE_KEPT_FAILED_ATTEMPTS", defaults.kept_failed_attempts, int),
            ),
        )


def _at_least_zero(name: str, value: int) -> int:
    if value < 0:
        raise SettingsError(f"{name}={value} must be 0 or more")
    return value


def _positive(name: str, value: float) -> float:
    if not value > 0:
        raise SettingsError(f"{name}={value} must be more than 0")
    return value


def _profiles(text: str) -> tuple[AcceleratorProfile, ...]:
    if not text.strip():
        return ()
    try:
        items = json.loads(text)
    except ValueError as error:
        raise SettingsError(f"KUBETUNE_ACCELERATOR_PROFILES is not JSON: {error}") from None
    if not isinstance(items, list):
        raise SettingsError("KUBETUNE_ACCELERATOR_PROFILES: expected a JSON list of profiles")
    return tuple(AcceleratorProfile.parse(item, f"KUBETUNE_ACCELERATOR_PROFILES[{i}]") for i, item in enumerate(items))


def _networks(text: str) -> tuple[Network, ...]:
    try:
        return parse_networks(text)
    except ValueError as error:
        raise SettingsError(f"{Env.DATASET_ALLOWED_NETWORKS.value}: {error}") from None
