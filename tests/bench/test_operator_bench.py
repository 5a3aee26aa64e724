"""The operator benchmark's harness at a tiny size, so it cannot rot: both operators run as
their own processes against the emulator and every figure comes back."""

from __future__ import annotations

import asyncio

import pytest
from bench.operator import run_case, table

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("kind", ["floor", "kubetune"])
def test_the_operator_benchmark_measures_every_figure(kind: str) -> None:
    case = asyncio.run(run_case(kind, jobs=4, interval=0.5, window=1.5))

    assert case.jobs == 4 and 0 < case.p50_seconds <= case.p99_seconds
    assert case.requests_per_job.get("create", 0) >= 1
    assert case.peak_rss_mib > 10
    if kind == "kubetune":
        assert case.status_writes_per_job_per_interval is not None
        steady = case.steady_requests_per_job_per_interval or {}
        assert steady.get("patch", 0) > 0 and not steady.get("list") and not steady.get("get"), steady
        assert (case.steady_state() or "").startswith("steady state: ")
    assert kind in table([case])
