"""The controller's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.leader = Gauge(
            "caa_controller_leader", "1 while this replica holds the Lease", registry=registry
        )
        self.passes = Counter(
            "caa_controller_reconcile_passes", "Reconcile passes, by outcome (ok, error)", ["outcome"],
            registry=registry,
        )  # fmt: skip
        self.pass_seconds = Histogram(
            "caa_controller_reconcile_seconds",
            "Duration of one reconcile pass",
            registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300),
        )
        self.peerpods = Counter(
            "caa_controller_peerpods",
            "PeerPods reconciled, by outcome (kept, cleaned-<reason>, failed, skipped)",
            ["outcome"],
            registry=registry,
        )
        self.orphans_deleted = Counter(
            "caa_controller_orphans_deleted", "Instances of gone nodes deleted", registry=registry
        )
        self.last_pass = Gauge(
            "caa_controller_last_pass_timestamp_seconds",
            "When the last pass ended successfully",
            registry=registry,
        )
