from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent

MINIMAL_JOB: dict[str, Any] = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "demo", "namespace": "default"},
    "spec": {
        "model": {"preset": "phi-3-mini-4k-instruct"},
        "dataset": {"huggingFace": {"name": "tatsu-lab/alpaca"}, "format": "instruction"},
        "method": {"type": "lora"},
        "output": {"pvc": {"claimName": "results", "path": "demo"}},
    },
}


@pytest.fixture
def job() -> dict[str, Any]:
    """A minimal valid FineTuneJob manifest, fresh for each test to change."""
    return copy.deepcopy(MINIMAL_JOB)


@pytest.fixture
def repo() -> Path:
    return REPO
