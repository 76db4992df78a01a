"""Prometheus metrics of the daemon, on a registry owned by the composition root."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class LifecycleObserver(Protocol):
    def observe(self, operation: str, outcome: str, seconds: float) -> None: ...

    def track_states(self, counts: Callable[[], dict[str, int]]) -> None: ...


class NullObserver:
    def observe(self, operation: str, outcome: str, seconds: float) -> None:
        return None

    def track_states(self, counts: Callable[[], dict[str, int]]) -> None:
        return None


STATES = ("created", "starting", "running", "failed", "stopping", "stopped")


class Metrics:
    """Lifecycle durations and outcomes, and sandboxes by state."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._duration = Histogram(
            "caa_lifecycle_seconds",
            "Duration of CreateVM/StartVM/StopVM",
            ["operation", "outcome"],
            registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600),
        )
        self._total = Counter(
            "caa_lifecycle_total",
            "CreateVM/StartVM/StopVM calls",
            ["operation", "outcome"],
            registry=registry,
        )
        self._states = Gauge("caa_sandboxes", "Sandboxes by state", ["state"], registry=registry)
        self._quarantined = Counter(
            "caa_quarantined_records",
            "Sandbox records set aside at start-up because they could not be trusted",
            registry=registry,
        )
        self._recovery_failures = Counter(
            "caa_recovery_failures", "Sandboxes whose recovery at start-up failed", registry=registry
        )
        self._task_failures = Counter(
            "caa_background_task_failures",
            "Background tasks (housekeeping, retries) that died of an exception and were restarted",
            ["task"],
            registry=registry,
        )

        self._outbox = Gauge(
            "caa_peerpod_outbox_pending",
            "Sandbox records not yet applied to their PeerPod (the Kubernetes API server is slow or away)",
            registry=registry,
        )

    def observe(self, operation: str, outcome: str, seconds: float) -> None:
        self._duration.labels(operation, outcome).observe(seconds)
        self._total.labels(operation, outcome).inc()

    def records_quarantined(self, count: int) -> None:
        self._quarantined.inc(count)

    def recovery_failed(self, sandbox_id: str, exc: BaseException) -> None:
        self._recovery_failures.inc()

    def task_failed(self, task: str, exc: BaseException) -> None:
        self._task_failures.labels(task).inc()

    def track_states(self, counts: Callable[[], dict[str, int]]) -> None:
        def reader(state: str) -> Callable[[], float]:
            return lambda: float(counts().get(state, 0))

        for state in STATES:
            self._states.labels(state).set_function(reader(state))

    def track_outbox(self, pending: Callable[[], int]) -> None:
        self._outbox.set_function(lambda: float(pending()))
