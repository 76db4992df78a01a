"""Prometheus metrics of the agent channel, read from the live agent proxies' counters.

The proxies count for themselves (``proxy.agent_proxy.ProxyStats``: no metrics
library on the byte path); this collector sums them at scrape time.  A proxy
that closes (its sandbox stopped) takes its counters with it, so the totals
would go down; the collector keeps what it last saw of each proxy and adds it
to a base once the proxy is gone, so the ``_total`` series only grow (what a
proxy counted between the last scrape and its close is not seen).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

#: counter name -> (the ProxyStats field, help text)
COUNTERS = {
    "caa_agent_connections": ("connections_total", "Shim connections accepted on agent sockets"),
    "caa_agent_upstream_dials": ("upstream_dials", "Connections to pod VM forwarders established"),
    "caa_agent_upstream_failures": ("upstream_failures", "Failed connection attempts to pod VM forwarders"),
    "caa_agent_resumes": ("resumes", "Agent sessions resumed on a new link after a drop or a hand-over"),
}
BYTES = {"to_vm": "bytes_in", "to_shim": "bytes_out"}


class AgentCounters(Protocol):
    connections_total: int
    connections_active: int
    upstream_dials: int
    upstream_failures: int
    resumes: int
    bytes_in: int
    bytes_out: int


def _fields() -> list[str]:
    return [field for field, _ in COUNTERS.values()] + list(BYTES.values())


class AgentChannelCollector(Collector):
    """``stats()`` yields (a key unique per proxy, its counters) for every live proxy."""

    def __init__(self, stats: Callable[[], Iterable[tuple[object, AgentCounters]]]) -> None:
        self._stats = stats
        self._last: dict[object, dict[str, int]] = {}
        self._retired = dict.fromkeys(_fields(), 0)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        seen: dict[object, dict[str, int]] = {}
        active = 0
        for key, counters in self._stats():
            seen[key] = {field: int(getattr(counters, field, 0)) for field in _fields()}
            active += int(counters.connections_active)
        for key in set(self._last) - set(seen):
            for field, value in self._last.pop(key).items():
                self._retired[field] += value
        self._last = seen
        totals = dict(self._retired)
        for values in seen.values():
            for field, value in values.items():
                totals[field] += value
        yield GaugeMetricFamily("caa_agent_connections_active", "Open shim connections", value=active)
        for name, (field, text) in COUNTERS.items():
            yield CounterMetricFamily(name, text, value=totals[field])
        traffic = CounterMetricFamily(
            "caa_agent_bytes", "Bytes relayed on the agent channel", labels=["direction"]
        )
        for direction, field in BYTES.items():
            traffic.add_metric([direction], totals[field])
        yield traffic
