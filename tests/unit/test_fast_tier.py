"""The fast tier's guard (tests/unit/conftest.py) refuses what would make a unit test slow, at
the moment it is asked for, and lets the native tools through. Each refusal is recorded for the
test to fail on; these tests take their own record back once they have checked it."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from tests.unit.conftest import GUARD, SlowWork
from tests.unit.deploy.helm import tool


def _refused(action: Callable[[], Any], what: str, why: str = "tests/unit trains nothing") -> None:
    with pytest.raises(SlowWork, match=why):
        action()
    assert GUARD.found and what in GUARD.found[-1], GUARD.found
    GUARD.found.clear()


def test_a_python_process_is_refused() -> None:
    _refused(lambda: subprocess.run([sys.executable, "-c", "pass"], check=False), "started a process")


def test_a_shell_is_refused() -> None:
    _refused(lambda: os.system("true"), "os.system")


def test_a_fork_is_refused() -> None:
    def fork() -> None:
        if os.fork() == 0:  # were it let through, the child would leave at once
            os._exit(0)

    _refused(fork, "os.fork")


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_every_multiprocessing_start_method_is_refused(method: str) -> None:
    process = multiprocessing.get_context(method).Process(target=print)

    _refused(process.start, "multiprocessing")


def test_a_training_loop_is_refused() -> None:
    from transformers import Trainer

    _refused(lambda: Trainer.train(None), "Trainer.train")  # type: ignore[arg-type]


def test_an_onnx_export_is_refused() -> None:
    import torch

    _refused(lambda: torch.onnx.export(None, ()), "torch.onnx.export")  # type: ignore[arg-type]


def test_the_native_tools_run() -> None:
    result = subprocess.run([str(tool("helm")), "version", "--short"], capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stderr
    assert not GUARD.found


def test_a_name_off_loopback_is_refused_when_looked_up() -> None:
    _refused(lambda: socket.getaddrinfo("huggingface.co", 443), "looked up huggingface.co", "loopback")


@pytest.mark.parametrize("address", ["203.0.113.7", "2001:db8::1"])
def test_an_address_off_loopback_is_refused_when_connected_to(address: str) -> None:
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as connection:
        _refused(lambda: connection.connect((address, 443)), f"connected to {address}:443", "loopback")


def test_loopback_is_let_through() -> None:
    with socket.socket() as server, socket.socket() as client:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client.connect(socket.getaddrinfo("localhost", server.getsockname()[1], socket.AF_INET)[0][4])
    assert not GUARD.found
