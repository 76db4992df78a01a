"""The agent channel's metrics: summed over live proxies, and totals that never go down."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from cloud_api_adaptor.agent_metrics import AgentChannelCollector
from cloud_api_adaptor.proxy.agent_proxy import ProxyStats


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels or None)


def test_totals_sum_live_proxies_and_keep_what_closed_proxies_counted() -> None:
    live: dict[str, ProxyStats] = {
        "a": ProxyStats(connections_total=2, connections_active=1, resumes=1, bytes_in=10, bytes_out=20),
        "b": ProxyStats(connections_total=1, connections_active=1, upstream_dials=3, upstream_failures=7),
    }
    registry = CollectorRegistry()
    registry.register(AgentChannelCollector(lambda: list(live.items())))

    assert sample(registry, "caa_agent_connections_active") == 2
    assert sample(registry, "caa_agent_connections_total") == 3
    assert sample(registry, "caa_agent_resumes_total") == 1
    assert sample(registry, "caa_agent_upstream_dials_total") == 3
    assert sample(registry, "caa_agent_upstream_failures_total") == 7
    assert sample(registry, "caa_agent_bytes_total", direction="to_vm") == 10
    assert sample(registry, "caa_agent_bytes_total", direction="to_shim") == 20

    live["a"].resumes = 4
    del live["b"]  # its sandbox stopped: what it counted stays in the totals
    assert sample(registry, "caa_agent_connections_active") == 1
    assert sample(registry, "caa_agent_connections_total") == 3
    assert sample(registry, "caa_agent_resumes_total") == 4
    assert sample(registry, "caa_agent_upstream_failures_total") == 7
    assert b"caa_agent_resumes_total 4.0" in generate_latest(registry)
