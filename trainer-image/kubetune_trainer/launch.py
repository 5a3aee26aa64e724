"""The trainer container's entry point: wait until rank 0's name resolves, then hand over
to torchrun with static rendezvous (the node rank is the pod's completion index).

Every rank waits for the name, rank 0 included: with a headless Service that publishes
pods before they are ready, the record appears a few seconds after the pod starts, and
torchrun gives up on a name it cannot resolve.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping

from kubetune.contract import ExitCode, RunSummary
from kubetune_trainer.logs import configure_pod_logging
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.summary import write_summary

log = logging.getLogger("kubetune_trainer.launch")

DEFAULT_RESOLVE_TIMEOUT = 600.0


def torchrun_command(env: Mapping[str, str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={env.get('KUBETUNE_NODES', '1')}",
        f"--nproc-per-node={env.get('KUBETUNE_PROCS_PER_NODE', '1')}",
        f"--node-rank={env.get('JOB_COMPLETION_INDEX', '0')}",
        f"--master-addr={env.get('KUBETUNE_MASTER_ADDR', '127.0.0.1')}",
        f"--master-port={env.get('KUBETUNE_MASTER_PORT', '29500')}",
        "--max-restarts=0",
        "-m",
        "kubetune_trainer",
    ]


def wait_for_name(
    host: str, timeout: float, resolve: Callable[[str], object] = socket.gethostbyname, pause: float = 1.0
) -> bool:
    """Whether `host` resolved before `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            resolve(host)
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)


def main() -> None:
    configure_pod_logging()
    env = os.environ
    host = env.get("KUBETUNE_MASTER_ADDR", "127.0.0.1")
    timeout = float(env.get("KUBETUNE_RESOLVE_TIMEOUT", DEFAULT_RESOLVE_TIMEOUT))
    if not wait_for_name(host, timeout):
        message = f"rank 0's address {host} did not resolve within {timeout:.0f} s"
        write_summary(RunSummary.failure("RendezvousFailed", message), Runtime.from_env().termination_log)
        log.error(message)
        sys.exit(int(ExitCode.FAILED))
    command = torchrun_command(env)
    log.info("starting %s", " ".join(command))
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
