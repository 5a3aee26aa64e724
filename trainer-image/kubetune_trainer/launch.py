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
from collections.abc import Callable
from typing import NoReturn

from kubetune.contract import ExitCode, Launch, PodEnvironment, RunSummary
from kubetune_trainer.logs import configure_pod_logging
from kubetune_trainer.summary import write_summary

log = logging.getLogger("kubetune_trainer.launch")


def torchrun_command(launch: Launch, node_rank: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kubetune_trainer.torchrun",  # exits with the failed rank's code, which the podFailurePolicy reads
        f"--nnodes={launch.nodes}",
        f"--nproc-per-node={launch.procs_per_node}",
        f"--node-rank={node_rank}",
        f"--master-addr={launch.master_addr}",
        f"--master-port={launch.master_port}",
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
    try:
        launch = Launch.read(env)
    except ValueError as error:
        _fail("InvalidSpec", str(error), ExitCode.INVALID_SPEC)
    host, timeout = launch.master_addr, launch.resolve_timeout
    if not wait_for_name(host, timeout):
        _fail("RendezvousFailed", f"rank 0's address {host} did not resolve within {timeout:.0f} s", ExitCode.FAILED)
    # The pod's completion index, which the Indexed Job sets (not a kubetune variable).
    command = torchrun_command(launch, env.get("JOB_COMPLETION_INDEX", "0"))
    log.info("starting %s", " ".join(command))
    os.execv(command[0], command)


def _fail(reason: str, message: str, code: ExitCode) -> NoReturn:
    write_summary(RunSummary.failure(reason, message), PodEnvironment.termination_log_in(os.environ))
    log.error(message)
    sys.exit(int(code))


if __name__ == "__main__":
    main()
