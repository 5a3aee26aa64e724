"""The Helm chart, rendered for the deploy tests.

helm (and kubectl) come from `make tools` (a prerequisite of `make unit` and `make test`), or from the
HELM (KUBECTL) environment variable. Without them the tests fail and say so: they never skip, so CI
cannot pass without running them.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "kubetune"
RELEASE = "kubetune"
NAMESPACE = "kubetune-system"

# Each case: the values files (from the chart's ci/ folder) and --set flags it renders with.
CASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "default": ((), ()),
    "namespaced": (("namespaced-values.yaml",), ()),
    "networkpolicy": (("networkpolicy-values.yaml",), ()),
    "namespaced-networkpolicy": (("namespaced-values.yaml",), ("networkPolicy.enabled=true",)),
    "servicemonitor": (("servicemonitor-values.yaml",), ()),
    "full": (("full-values.yaml",), ()),
}

Manifest = dict[str, Any]


def tool(name: str) -> Path:
    """helm or kubectl: $HELM or $KUBECTL, else the one `make tools` fetched."""
    path = Path(os.environ.get(name.upper()) or REPO / ".tools" / "bin" / name)
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"{name} not found at {path}: run `make tools` (make unit and make test do it), or set {name.upper()}"
        )
    return path


def helm_binary() -> Path:
    return tool("helm")


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, check=False, timeout=60)


def value_args(files: Sequence[str] = (), sets: Sequence[str] = ()) -> list[str]:
    args = []
    for name in files:
        args += ["-f", str(CHART / "ci" / name)]
    for item in sets:
        args += ["--set", item]
    return args


def template(*args: str) -> subprocess.CompletedProcess[str]:
    return run_helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)


_rendered: dict[str, list[Manifest]] = {}


def rendered(case: str) -> list[Manifest]:
    """The objects the chart renders for a case (rendered once per test run)."""
    if case not in _rendered:
        files, sets = CASES[case]
        result = template(*value_args(files, sets))
        assert result.returncode == 0, result.stderr
        _rendered[case] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return _rendered[case]


def of_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [o for o in objects if o["kind"] == kind]


def only(objects: list[Manifest], kind: str) -> Manifest:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]
