"""The fast tier's rule, kept true: a test under tests/unit trains nothing, exports nothing and
starts no process but a few native tools. What does belongs in tests/integration/trainer.

The guard watches what makes a test slow, whatever kubetune's own code is called: a process
started in any way (an audit hook sees subprocess, os.fork, os.system, os.posix_spawn; the
multiprocessing start methods that fork no Python process of their own are caught at
`Process.start`), a training run (transformers' `Trainer.train`, which every training path
calls) and an ONNX export (`torch.onnx.export`). The last two are wrapped when their modules
are first imported, so a test that needs neither torch nor transformers does not load them.
A test that does one of these fails, even when the code under test catches the error.

The guard also keeps every test's traffic on loopback, as the project's rule is: a name looked
up or a connection opened to any other host fails the test (a client that retries an
unreachable Hub spends seconds before it gives up, and a reachable one makes the test depend
on it).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import ipaddress
import multiprocessing.process
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

import pytest

TOOLS = frozenset({"docker-registry", "hadolint", "helm", "kubectl", "openssl"})
"""Native programs a unit test may run: each starts and answers in a fraction of a second (helm
renders the chart in about 0.1 s; a loopback docker-registry serves the OCI tests' pushes
within a second), where a Python child spends seconds importing before it starts."""

WHY = "tests/unit trains nothing, exports nothing and starts no process but " + ", ".join(sorted(TOOLS))
WHERE = "move the test to tests/integration/trainer (or a tier of its own), as README's Tests section says"


class SlowWork(Exception):
    """What a unit test did that a unit test may not do."""


class _Guard:
    def __init__(self) -> None:
        self.test: str | None = None
        self.found: list[str] = []

    def refuse(self, what: str, why: str = f"{WHY}; {WHERE}") -> None:
        if self.test is not None:
            self.found.append(f"{what}: {why}")
            raise SlowWork(self.found[-1])

    @contextlib.contextmanager
    def watching(self, test: str) -> Iterator[None]:
        self.test, self.found = test, []
        try:
            yield
        finally:
            found, self.test = self.found, None
            if found:
                pytest.fail(f"{test}: {'; '.join(found)}", pytrace=False)


GUARD = _Guard()


def _program(args: Any, executable: Any = None) -> str:
    if executable:
        return os.fsdecode(executable)
    if isinstance(args, str | bytes | os.PathLike):
        return os.fsdecode(args).split()[0] if os.fsdecode(args).strip() else ""
    first = next(iter(args), "") if isinstance(args, Sequence) else ""
    return os.fsdecode(first)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if GUARD.test is None:
        return
    if event == "subprocess.Popen":
        program = _program(args[1], args[0])
        if os.path.basename(program) not in TOOLS:
            GUARD.refuse(f"started a process: {program}")
    elif event == "os.posix_spawn":
        program = os.fsdecode(args[0])
        if os.path.basename(program) not in TOOLS:
            GUARD.refuse(f"started a process: {program}")
    elif event in ("os.fork", "os.forkpty", "os.spawn", "os.system"):
        GUARD.refuse(f"started a process ({event})")
    elif event in ("socket.getaddrinfo", "socket.gethostbyname") and not _loopback(args[0]):
        GUARD.refuse(f"looked up {_host(args[0])}", OFF_LOOPBACK)
    elif event == "socket.connect" and isinstance(args[1], tuple) and not _loopback(args[1][0]):
        GUARD.refuse(f"connected to {_host(args[1][0])}:{args[1][1]}", OFF_LOOPBACK)


OFF_LOOPBACK = "a test sends traffic to loopback (127.0.0.x, ::1, localhost) only"


def _host(host: Any) -> str:
    return os.fsdecode(host) if isinstance(host, str | bytes) else str(host)


def _loopback(host: Any) -> bool:
    """Whether a name or address a socket is given stays on this machine (None and "" are the
    wildcard a server binds to)."""
    if host is None:
        return True
    name = _host(host)
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return name in ("", "localhost") or name.endswith(".localhost")
    return address.is_loopback or address.is_unspecified


def _refusing(what: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def refused(*args: Any, **kwargs: Any) -> Any:
        GUARD.refuse(what)
        return original(*args, **kwargs)

    refused.__wrapped__ = original  # type: ignore[attr-defined]
    return refused


def _wrap_trainer(module: ModuleType) -> None:
    module.Trainer.train = _refusing("ran a training loop (Trainer.train)", module.Trainer.train)


def _wrap_onnx(module: ModuleType) -> None:
    module.export = _refusing("exported to ONNX (torch.onnx.export)", module.export)


class _WrapOnImport(importlib.abc.MetaPathFinder):
    """Wraps a module's function once the module has run, when something first imports it."""

    def __init__(self, wrappers: dict[str, Callable[[ModuleType], None]]) -> None:
        self.wrappers = wrappers

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name not in self.wrappers:
            return None
        wrap = self.wrappers.pop(name)
        spec = importlib.util.find_spec(name)  # this finder answers no name twice: no recursion
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            wrap(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def pytest_configure(config: pytest.Config) -> None:
    sys.addaudithook(_audit)
    multiprocessing.process.BaseProcess.start = _refusing(  # type: ignore[method-assign]
        "started a process (multiprocessing)", multiprocessing.process.BaseProcess.start
    )
    wrappers = {"transformers.trainer": _wrap_trainer, "torch.onnx": _wrap_onnx}
    for name in [name for name in wrappers if name in sys.modules]:
        wrappers.pop(name)(sys.modules[name])
    sys.meta_path.insert(0, _WrapOnImport(wrappers))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with GUARD.watching(item.nodeid):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with GUARD.watching(item.nodeid):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    with GUARD.watching(item.nodeid):
        return (yield)
