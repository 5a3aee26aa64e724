from __future__ import annotations

import sys

from kubetune.contract import Launch
from kubetune_trainer.launch import torchrun_command, wait_for_name


def test_torchrun_command_uses_static_rendezvous_from_the_pod_environment() -> None:
    launch = Launch.read(
        {
            "KUBETUNE_NODES": "4",
            "KUBETUNE_PROCS_PER_NODE": "8",
            "KUBETUNE_MASTER_ADDR": "demo-a1-0.demo",
            "KUBETUNE_MASTER_PORT": "29500",
        }
    )
    command = torchrun_command(launch, node_rank="3")

    assert command[:3] == [sys.executable, "-m", "kubetune_trainer.torchrun"]
    assert {
        "--nnodes=4",
        "--nproc-per-node=8",
        "--node-rank=3",
        "--master-addr=demo-a1-0.demo",
        "--master-port=29500",
        "--max-restarts=0",
    } <= set(command)
    assert command[-2:] == ["-m", "kubetune_trainer"]


def test_waits_until_the_name_resolves() -> None:
    answers = iter([OSError("no such host"), OSError("no such host"), "10.0.0.7"])

    def resolve(host: str) -> object:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert wait_for_name("demo-a1-0.demo", timeout=5, resolve=resolve, pause=0) is True


def test_gives_up_after_the_timeout() -> None:
    def never(host: str) -> object:
        raise OSError("no such host")

    assert wait_for_name("demo-a1-0.demo", timeout=0, resolve=never, pause=0) is False
