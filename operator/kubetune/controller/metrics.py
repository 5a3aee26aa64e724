"""The operator's Prometheus metrics: jobs by phase, reconcile durations, API errors."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from kubetune.api import Phase


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    phases: dict[tuple[str, str], Phase] = field(default_factory=dict)
    """Last phase of each job the operator watches."""

    def __post_init__(self) -> None:
        self.jobs = Gauge("kubetune_finetunejobs", "FineTuneJobs watched, by phase", ["phase"], registry=self.registry)
        self.reconcile_seconds = Histogram(
            "kubetune_reconcile_duration_seconds",
            "Time to read, plan and apply one FineTuneJob",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.api_errors = Counter(
            "kubetune_api_errors",
            "Kubernetes API calls that failed, by HTTP status",
            ["status"],
            registry=self.registry,
        )
        for phase in Phase:
            self.jobs.labels(phase=phase.value).set(0)

    def observe(self, namespace: str, name: str, phase: Phase, seconds: float) -> None:
        self.reconcile_seconds.observe(seconds)
        before = self.phases.get((namespace, name))
        if before is not phase:
            self.phases[(namespace, name)] = phase
            self._move(before, phase)

    def forget(self, namespace: str, name: str) -> None:
        self._move(self.phases.pop((namespace, name), None), None)

    def _move(self, source: Phase | None, target: Phase | None) -> None:
        """One job from one phase's count to another's (None: not counted); counting every
        job again at every pass cost time in proportion to the jobs watched."""
        if source is not None:
            self.jobs.labels(phase=source.value).dec()
        if target is not None:
            self.jobs.labels(phase=target.value).inc()

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)
