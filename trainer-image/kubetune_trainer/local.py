"""`kubetune run`: the same manifest the operator takes, trained on this machine.

Claims map to folders under one local folder (claim `models` is `<volumes>/models`),
ConfigMaps written in the same file as the FineTuneJob are mounted as they would be in
a pod, and Secrets are read from a local folder. One process runs in this interpreter
with a progress line; several go through torchrun, as in a pod.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kubetune.api import FineTuneJob
from kubetune.api.resource import dump_spec
from kubetune.contract import VARIABLES, ExitCode, Network, PodEnvironment, Progress, RunSummary
from kubetune_trainer.logs import quiet_libraries
from kubetune_trainer.mounts import inside
from kubetune_trainer.runtime import Runtime


@dataclass(frozen=True)
class LocalPlan:
    job: FineTuneJob
    volumes: Path
    work: Path
    secrets: Path
    output: Path | None
    processes: int
    config_maps: dict[str, dict[str, str]]
    allowed_networks: tuple[Network, ...] = ()
    """Private networks dataset URLs may reach (--allow-network)."""
    model_cache: Path | None = None
    """A cache of downloaded models shared between runs (--model-cache); else under `work`."""

    def environment(self) -> PodEnvironment:
        """What a pod would be told, with this machine's folders: the in-process run and the
        processes torchrun starts read the same."""
        return PodEnvironment(
            spec=self.work / "spec.json",
            job_name=self.job.metadata.name or "local",
            namespace=self.job.metadata.namespace or "default",
            volumes=self.volumes,
            configmaps=self.work / "configmaps",
            secrets=self.secrets,
            work=self.work,
            termination_log=self.work / "termination-log",
            progress_port=0,
            output=self.output,
            model_cache=self.model_cache,
            allowed_networks=self.allowed_networks,
        )

    def runtime(self) -> Runtime:
        return Runtime.of(self.environment())

    def process_environment(self, inherited: Mapping[str, str]) -> dict[str, str]:
        """The environment of the processes torchrun starts: this machine's, less any
        contract variable it happens to hold, plus the plan's."""
        # kubetune run says what failed, once: the ranks need not log it too.
        told = self.environment().model_copy(update={"outcome_shown_by_caller": True})
        return {k: v for k, v in inherited.items() if k not in VARIABLES} | told.variables()


def write_config_maps(config_maps: dict[str, dict[str, str]], folder: Path) -> None:
    """Lay out ConfigMaps as a pod's volume would: one file per key."""
    for name, data in config_maps.items():
        for key, value in data.items():
            file = inside(folder / name, key, f"ConfigMap {name} key")
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(value)


class ProgressLine:
    """One line that rewrites itself: step/total, a bar, loss, a preference objective's reward
    accuracy, tokens per second, ETA."""

    def __init__(self, write: Callable[[str], object] = sys.stderr.write) -> None:
        self.write = write
        self.started = time.monotonic()
        self.shown = False
        """Whether a line was written (and so wants ending before anything else is said)."""

    def __call__(self, progress: Progress) -> None:
        total = progress.total_steps or 0
        done = progress.step / total if total else 0.0
        bar = "#" * int(done * 24) + "." * (24 - int(done * 24))
        parts = [f"step {progress.step}/{total or '?'}", f"[{bar}]"]
        if progress.loss is not None:
            parts.append(f"loss {progress.loss:.4f}")
        if progress.reward_accuracy is not None:
            parts.append(f"reward accuracy {progress.reward_accuracy:.2f}")
        if progress.tokens_per_second:
            parts.append(f"{progress.tokens_per_second:,.0f} tok/s")
        if progress.step and total:
            elapsed = time.monotonic() - self.started
            parts.append(f"eta {elapsed / progress.step * (total - progress.step):.0f}s")
        self.write("\r" + "  ".join(parts) + " " * 4)
        self.shown = True


def run_local(plan: LocalPlan, on_progress: Callable[[Progress], None] | None = None) -> tuple[ExitCode, RunSummary]:
    plan.work.mkdir(parents=True, exist_ok=True)
    write_config_maps(plan.config_maps, plan.work / "configmaps")
    if plan.processes == 1:
        quiet_libraries()  # before they load: the terminal shows kubetune's words first
        from kubetune_trainer.main import run

        return run(plan.job.spec, plan.runtime(), [on_progress] if on_progress else [])
    return _run_with_torchrun(plan)


def _run_with_torchrun(plan: LocalPlan) -> tuple[ExitCode, RunSummary]:

    runtime = plan.runtime()
    runtime.spec.write_text(dump_spec(plan.job.spec))
    env = plan.process_environment(os.environ)
    command = [
        sys.executable,
        "-m",
        "kubetune_trainer.torchrun",
        "--standalone",
        f"--nproc-per-node={plan.processes}",
        "-m",
        "kubetune_trainer",
    ]
    code = subprocess.run(command, env=env, check=False).returncode
    try:
        summary = RunSummary.parse(runtime.termination_log.read_text())
    except OSError:
        summary = RunSummary()
    if not summary.reported:
        summary = RunSummary.failure("TrainingFailed", f"torchrun exited with {code}")
    try:
        return ExitCode(code), summary
    except ValueError:
        return ExitCode.FAILED, summary
