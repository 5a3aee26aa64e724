"""The trainer's runs forked from a process that imported its libraries once, for the tests.

Every new Python that runs the trainer imports torch, transformers, peft and DeepSpeed again:
about 10 s a process on two cores, where a tiny run trains for a second or two. The tests of
what the trainer does (each row of the support matrix, a run stopped and resumed) start it as
multiprocessing's forkserver does: one server process per test session imports the libraries,
and each process of a run is a fork of it with the run's environment and the log file as its
output. Several ranks get the variables torchrun gives a rank (`rank_environment`, checked
against torchrun's own in test_forked.py).

What torchrun itself does (the exit code of the rank that failed first, one rank's signal, a
rank that dies) is tested where it is the subject, with torchrun: test_launch_exit_code,
test_one_process, the evicted run in test_distributed, `kubetune run --nproc 2` in
test_run_output, and every pod of the container tier. `ForkedRun` ends several ranks as
torchrun does: when one fails, the others get SIGTERM, then SIGKILL after a grace period."""

from __future__ import annotations

import io
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import forkserver
from multiprocessing.connection import wait
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from pathlib import Path

# What a rank imports before its first step, in the order the trainer does; the rest is cheap.
PRELOADED = (
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "deepspeed",
    "kubetune_trainer.main",
    "kubetune_trainer.train",
)
# torchrun gives a rank that fails this long after SIGTERM before SIGKILL (its agent's default).
GRACE_SECONDS = 30.0
RUN_ID = "none"  # torchrun's when it is given no --rdzv-id
# Forked runs are CPU runs, on a machine with GPUs too: a CUDA context cannot cross a fork.
NO_ACCELERATOR = {"CUDA_VISIBLE_DEVICES": ""}


def rank_environment(base: Mapping[str, str], rank: int, world_size: int, master_port: int) -> dict[str, str]:
    """The environment torchrun gives `rank` of a one-node run of `world_size` processes over
    loopback, on top of `base`. One difference: torchrun's agent serves the rendezvous store
    its ranks join (TORCHELASTIC_USE_AGENT_STORE=True), and without an agent rank 0 serves it."""
    return dict(base) | {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "GROUP_RANK": "0",
        "ROLE_RANK": str(rank),
        "ROLE_NAME": "default",
        "LOCAL_WORLD_SIZE": str(world_size),
        "WORLD_SIZE": str(world_size),
        "GROUP_WORLD_SIZE": "1",
        "ROLE_WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(master_port),
        "TORCHELASTIC_RESTART_COUNT": "0",
        "TORCHELASTIC_MAX_RESTARTS": "0",
        "TORCHELASTIC_RUN_ID": RUN_ID,
        "TORCHELASTIC_USE_AGENT_STORE": "False",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": base.get("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"),
        # The signals torchrun passes on to its ranks (its agent sets this in its own environment).
        "TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT",
    }


def failure_code(exitcode: int) -> int:
    """A failed rank's code as kubetune_trainer.torchrun passes it on: a signal's death is 1."""
    return exitcode if exitcode > 0 else 1


@dataclass
class ForkedRun:
    """A forked run read like the `subprocess.Popen` of its launch: one process's own exit code
    (a signal's death negative, as Popen says), or for several ranks torchrun's (the first
    failure's code, a signal's death 1) once every rank has ended. At the first failure the
    other ranks get SIGTERM, and SIGKILL once the grace period has passed; `poll` never blocks."""

    ranks: list[BaseProcess]
    failed: int | None = field(default=None, init=False)
    kill_at: float | None = field(default=None, init=False)
    """When the ranks still running after a failure get SIGKILL."""

    def poll(self) -> int | None:
        if len(self.ranks) == 1:
            return self.ranks[0].exitcode
        running = [rank for rank in self.ranks if rank.exitcode is None]
        first = next((rank.exitcode for rank in self.ranks if rank.exitcode not in (None, 0)), None)
        if self.failed is None and first is not None:
            self.failed, self.kill_at = failure_code(first), time.monotonic() + GRACE_SECONDS
            for rank in running:
                rank.terminate()
        elif self.kill_at is not None and time.monotonic() >= self.kill_at:
            for rank in running:
                rank.kill()
        if any(rank.exitcode is None for rank in self.ranks):
            return None
        return self.failed if self.failed is not None else 0

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise subprocess.TimeoutExpired("forked ranks", timeout or 0.0)
            running = [rank.sentinel for rank in self.ranks if rank.exitcode is None]
            pauses = [moment - now for moment in (deadline, self.kill_at) if moment is not None]
            if running:  # (else the last one ended since the poll, which says so next)
                wait(running, timeout=max(0.0, min(pauses)) if pauses else None)
        return code

    def send_signal(self, number: int) -> None:
        """`number` to every rank still running, as a pod's signal reaches each through torchrun."""
        for rank in self.ranks:
            if rank.exitcode is None and rank.pid is not None:
                os.kill(rank.pid, number)

    def kill(self) -> None:
        for rank in self.ranks:
            if rank.exitcode is None:
                rank.kill()
        for rank in self.ranks:
            rank.join()


# Every run forked in this session, so that a test that fails midway leaves none running.
STARTED: list[ForkedRun] = []


def start(base: Mapping[str, str], log: Path, processes: int) -> ForkedRun:
    """Fork the trainer, writing to `log`: one process as `python -m kubetune_trainer`, or
    `processes` ranks as torchrun starts them (over loopback, on a free port)."""
    # Here, not at the top: every rank imports this module to find `_rank`, and needs no more.
    from tests.unit.trainer.conftest import _free_port

    context = server(base)
    port = _free_port()
    environments = [
        (rank_environment(base, rank, processes, port) if processes > 1 else dict(base)) | NO_ACCELERATOR
        for rank in range(processes)
    ]
    ranks = [
        context.Process(target=_rank, args=(environment, str(log)), name=f"rank-{rank}")
        for rank, environment in enumerate(environments)
    ]
    for rank in ranks:
        rank.start()
    STARTED.append(ForkedRun(ranks))
    return STARTED[-1]


def kill_all() -> None:
    """Kill whatever forked run is still running."""
    while STARTED:
        STARTED.pop().kill()


def server(base: Mapping[str, str]) -> ForkServerContext:
    """multiprocessing's forkserver, started once per session with the trainer's libraries
    imported; every fork of it in the session, a rank or not, comes from that server."""
    context = multiprocessing.get_context("forkserver")
    with _server_environment(base):
        context.set_forkserver_preload(list(PRELOADED))
        forkserver.ensure_running()
    return context


@contextmanager
def _server_environment(base: Mapping[str, str]) -> Iterator[None]:
    """Start the server (once) with OMP_NUM_THREADS as a rank has it: the OpenMP runtime reads
    it when torch loads, which is in the server. Whatever else a library reads at import (the
    Hub client's HF_HUB_OFFLINE, HF_HOME) is the server's too, whatever a run's environment
    says: a test that needs those different starts its run with torchrun. (The server runs one thread of its own after
    the imports, pyarrow's jemalloc background thread, which jemalloc's fork handlers make safe
    to fork, as a DataLoader's forked workers are.)"""
    saved = dict(os.environ)
    os.environ.update({"OMP_NUM_THREADS": base.get("OMP_NUM_THREADS", "1")} | NO_ACCELERATOR)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _rank(environment: dict[str, str], log: str) -> None:
    """One rank, in the forked process: its environment, its output to the log, the trainer."""
    os.environ.clear()
    os.environ.update(environment)
    output = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(output, 1)
    os.dup2(output, 2)
    os.close(output)
    # Unbuffered, as torchrun's `python -u`: what a rank wrote is in the log when it dies.
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
    from kubetune_trainer.main import main

    main()
