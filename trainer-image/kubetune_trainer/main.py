"""The trainer's entry point: read the spec and the runtime, train, report the outcome.

Every failure ends in a classified summary (reason, message) in the termination-message
file and an exit code the operator acts on; nothing ends in an unexplained traceback. A
full disk is recognised whichever library's write ran into it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from pydantic import ValidationError

from kubetune.api import FineTuneJobSpec
from kubetune.api.problems import problems_from_validation_error
from kubetune.contract import ExitCode, PodEnvironment, Progress, RunSummary
from kubetune_trainer.disk import disk_full
from kubetune_trainer.errors import InvalidSpec, OutOfMemory, TrainerError
from kubetune_trainer.logs import configure_pod_logging
from kubetune_trainer.mounts import access_denied
from kubetune_trainer.progress import ProgressServer
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.summary import write_summary

log = logging.getLogger("kubetune_trainer")


def read_spec(path: Path) -> FineTuneJobSpec:
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InvalidSpec(f"cannot read the spec at {path}: {error}") from None
    try:
        return FineTuneJobSpec.model_validate(body)
    except ValidationError as error:
        problems = "; ".join(str(p) for p in problems_from_validation_error(error, ("spec",)))
        raise InvalidSpec(problems) from None


def run(
    spec: FineTuneJobSpec, runtime: Runtime, listeners: Sequence[Callable[[Progress], None]] = ()
) -> tuple[ExitCode, RunSummary]:
    """Train and classify the outcome. Returns the exit code and the summary written."""
    from kubetune_trainer.train import train  # torch and transformers load only when training

    try:
        summary = train(spec, runtime, listeners)  # it writes summary.json beside the outputs
        code = ExitCode.OK
    except TrainerError as error:
        summary, code = RunSummary.failure(error.reason, str(error)), error.exit_code
    except torch.OutOfMemoryError as error:
        oom = OutOfMemory(f"{_memory_figures()}: {error}")
        summary, code = RunSummary.failure(oom.reason, str(oom)), oom.exit_code
    except Exception as error:  # a full disk or a file's permissions speak through many libraries' types
        known = disk_full(error, _written_folders(spec, runtime)) or access_denied(error)
        if known is None:
            raise
        summary, code = RunSummary.failure(known.reason, str(known)), known.exit_code
    if runtime.is_main:
        write_summary(summary, runtime.termination_log)
    return code, summary  # the caller says what failed: the pod's log, or `kubetune run`'s own line


def _written_folders(spec: FineTuneJobSpec, runtime: Runtime) -> list[Path]:
    """Where the trainer writes, the likeliest to fill first: checkpoints, outputs, scratch."""
    from kubetune_trainer.outputs import checkpoint_folder, output_folder

    try:
        out = output_folder(spec, runtime)
        folders = [checkpoint_folder(spec, runtime, out), out]
    except TrainerError:
        folders = []
    return [*folders, runtime.work, *([runtime.model_cache] if runtime.model_cache else [])]


def _memory_figures() -> str:
    if not torch.cuda.is_available():
        return "out of memory"
    device = torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(device)
    peak = torch.cuda.max_memory_allocated(device)
    gib = 1024**3
    return (
        f"accelerator {device} out of memory (peak {peak / gib:.1f} GiB allocated, "
        f"{free / gib:.1f} of {total / gib:.1f} GiB free)"
    )


def main() -> None:
    configure_pod_logging()
    try:
        runtime = Runtime.from_env()
        spec = read_spec(runtime.spec)
    except InvalidSpec as error:
        write_summary(RunSummary.failure(error.reason, str(error)), PodEnvironment.termination_log_in(os.environ))
        log.error("%s", error)
        sys.exit(error.exit_code)
    if runtime.is_main:
        with ProgressServer(runtime.job_name, runtime.progress_port) as server:
            code, summary = run(spec, runtime, [server.show])
    else:
        code, summary = run(spec, runtime)
    if code is not ExitCode.OK and not runtime.outcome_shown_by_caller:
        log.error("%s: %s", summary.reason, summary.message)
    sys.exit(int(code))
