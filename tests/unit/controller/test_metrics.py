"""The operator's Prometheus metrics count what they say."""

from __future__ import annotations

from prometheus_client import generate_latest

from kubetune.api import Phase
from kubetune.controller.metrics import Metrics


def test_jobs_are_counted_by_their_latest_phase_and_forgotten_when_gone() -> None:
    metrics = Metrics()

    metrics.observe("a", "one", Phase.PENDING, 0.02)
    metrics.observe("a", "one", Phase.RUNNING, 0.03)
    metrics.observe("b", "two", Phase.RUNNING, 0.01)
    metrics.observe("b", "three", Phase.FAILED, 0.01)
    metrics.forget("b", "three")
    metrics.api_errors.labels(status="409").inc()

    text = generate_latest(metrics.registry).decode()
    assert 'kubetune_finetunejobs{phase="Running"} 2.0' in text
    assert 'kubetune_finetunejobs{phase="Pending"} 0.0' in text
    assert 'kubetune_finetunejobs{phase="Failed"} 0.0' in text
    assert "kubetune_reconcile_duration_seconds_count 4.0" in text
    assert 'kubetune_api_errors_total{status="409"} 1.0' in text
