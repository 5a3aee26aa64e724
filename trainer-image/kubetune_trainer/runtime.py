"""Facts about this process that the spec cannot know: its rank, its peers, its folders.

torchrun sets the rank variables; the operator (or `kubetune run`) sets the kubetune
ones. Read once, at start, into a frozen object that the rest of the trainer is given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kubetune.contract import DEFAULT_PATHS, Env, Network, PodEnvironment
from kubetune_trainer.errors import InvalidSpec
from kubetune_trainer.mounts import inside


@dataclass(frozen=True)
class Runtime:
    rank: int
    local_rank: int
    world_size: int
    job_name: str
    namespace: str
    volumes: Path
    configmaps: Path
    secrets: Path
    work: Path
    termination_log: Path
    progress_port: int
    output_override: Path | None = None
    model_cache: Path | None = None
    """The installation's shared cache of downloaded models, when it has one."""
    allowed_networks: tuple[Network, ...] = ()
    """Private networks dataset URLs may reach, as the installation (or kubetune run) allows."""
    spec: Path = Path(DEFAULT_PATHS[Env.SPEC])
    """Where the validated spec is mounted."""
    outcome_shown_by_caller: bool = False
    """Whether the process that started this one reports a failure itself (kubetune run)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Runtime:
        """The contract's environment (and torchrun's rank variables) of this process."""
        env = os.environ if env is None else env
        try:
            environment = PodEnvironment.read(env)
        except ValueError as error:
            raise InvalidSpec(str(error)) from None
        return cls.of(
            environment,
            rank=int(env.get("RANK", "0")),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            world_size=int(env.get("WORLD_SIZE", "1")),
        )

    @classmethod
    def of(cls, environment: PodEnvironment, rank: int = 0, local_rank: int = 0, world_size: int = 1) -> Runtime:
        return cls(
            rank=rank,
            local_rank=local_rank,
            world_size=world_size,
            job_name=environment.job_name,
            namespace=environment.namespace,
            volumes=environment.volumes,
            configmaps=environment.configmaps,
            secrets=environment.secrets,
            work=environment.work,
            termination_log=environment.termination_log,
            progress_port=environment.progress_port,
            output_override=environment.output,
            model_cache=environment.model_cache,
            allowed_networks=environment.allowed_networks,
            spec=environment.spec,
            outcome_shown_by_caller=environment.outcome_shown_by_caller,
        )

    def claim_path(self, claim_name: str, path: str) -> Path:
        """Where a path on a PersistentVolumeClaim is in this pod's file system (never outside
        the claim: InvalidSpec says so)."""
        return inside(self.volumes / claim_name, path, f"path on claim {claim_name}")

    def config_map_file(self, name: str, key: str) -> Path:
        """Where a key of a mounted ConfigMap is (never outside its folder)."""
        return inside(self.configmaps / name, key, f"ConfigMap {name} key")
