"""Tunnel benchmark: TCP pod-to-peer through the VXLAN tunnel, next to the plain veth path, same run.

Built on ``cloud_api_adaptor.podnetwork.testbed`` (namespaces only, documentation
addresses, no link to the machine's own namespace).  A client in the pod's
namespace talks to a server in the "peer" namespace, routed by the "node":

* ``veth``: the "plain" namespace, a CNI-style veth straight to the node (the baseline);
* ``tunnel``: the pod's IP inside the VM's pod namespace, over VXLAN across the
  underlay veth, as set up by ``WorkerNode.setup`` and ``setup_pod_node``
  (pod MTU capped to 1450 over a 1500-byte underlay: the default);
* ``tunnel_mtu1500_over_1500``: the cap raised to 1500 on the same underlay, so
  full-size frames no longer fit in one underlay packet (what the cap avoids);
* ``tunnel_jumbo_underlay``: a 9000-byte underlay with the cap at 9000, so the
  pod keeps its 1500 MTU (the jumbo-frame configuration).

Per path: throughput of one TCP stream for ``seconds`` (blocking sockets on
threads, 256 KiB writes) and TCP connect latency (SYN to established, median
and p90 over ``connects`` connections after a warm-up).  Reported with the MTUs
and the tunnel/veth throughput ratio (target: at least 0.7).  Nothing is
asserted; the numbers are for the README.  Needs root (network namespaces).
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import time
from typing import Any

from cloud_api_adaptor.podnetwork import WorkerNode, setup_pod_node, teardown_pod_node
from cloud_api_adaptor.podnetwork.netlink import Netlink, in_netns
from cloud_api_adaptor.podnetwork.netns import run_in_netns, socket_in_netns
from cloud_api_adaptor.podnetwork.notrack import detect_notrack
from cloud_api_adaptor.podnetwork.testbed import (
    PEER_IP,
    PLAIN_IP,
    POD_IP,
    UNDERLAY_LINK,
    VM_UNDERLAY,
    Testbed,
)

SECONDS = 0.4
ROUNDS = 3
CONNECTS = 100
CHUNK = 256 * 1024
TARGET_RATIO = 0.7
_TIMEOUT = 15.0
# name, underlay MTU, MTU cap on the VM side (None: the plain veth path)
_VARIANTS: tuple[tuple[str, int | None, int | None], ...] = (
    ("veth", None, None),
    ("tunnel", 1500, 1450),
    ("tunnel_mtu1500_over_1500", 1500, 1500),
    ("tunnel_jumbo_underlay", 9000, 9000),
)


def run(seconds: float = SECONDS, rounds: int = ROUNDS, connects: int = CONNECTS) -> dict[str, Any]:
    """Measure every path ``rounds`` times, interleaved so load spikes hit all paths alike."""
    if os.geteuid() != 0:
        return {"skipped": "needs root (network namespaces)"}
    return asyncio.run(_run(seconds, rounds, connects))


async def _run(seconds: float, rounds: int, connects: int) -> dict[str, Any]:
    bed = await Testbed.create()
    try:
        notrack = detect_notrack()
        node = WorkerNode(bed.worker_settings(), notrack=notrack)
        config = await node.inspect(bed.pod, 555000)
        await node.setup(bed.pod, [str(VM_UNDERLAY.ip)], config)
        throughput: dict[str, list[float]] = {name: [] for name, _, _ in _VARIANTS}
        connect: dict[str, list[float]] = {name: [] for name, _, _ in _VARIANTS}
        mtus: dict[str, int] = {}
        try:
            for _ in range(rounds):
                for name, underlay_mtu, cap in _VARIANTS:
                    if underlay_mtu is None or cap is None:
                        client_ns, client_ip, mtus[name] = bed.plain, str(PLAIN_IP.ip), 1500
                    else:
                        await _set_underlay_mtu(bed, underlay_mtu)
                        await setup_pod_node(config, bed.vmpod, vm_netns=bed.vm, mtu_cap=cap, notrack=notrack)
                        client_ns, client_ip = bed.vmpod, str(POD_IP.ip)
                        mtus[name] = await in_netns(bed.vmpod, lambda nl: _mtu(nl, config.interface))
                    rate, times = await _measure(client_ns, client_ip, bed, seconds, connects)
                    throughput[name].append(rate * 8 / 1e6)
                    connect[name] += times
        finally:
            await teardown_pod_node(config, bed.vmpod, vm_netns=bed.vm, notrack=notrack)
            await node.teardown(bed.pod, config)
    finally:
        await bed.aclose()

    paths: dict[str, dict[str, float]] = {}
    for name, underlay_mtu, _ in _VARIANTS:
        us = sorted(connect[name])
        paths[name] = {
            "pod_mtu": mtus[name],
            "underlay_mtu": underlay_mtu or 0,
            "throughput_mbit_s_best": round(max(throughput[name]), 1),
            "throughput_mbit_s_median": round(statistics.median(throughput[name]), 1),
            "connect_us_p50": round(statistics.median(us), 1),
            "connect_us_p90": round(us[int(len(us) * 0.9) - 1], 1),
        }
    return {
        "seconds_per_stream": seconds,
        "rounds": rounds,
        "connects_per_round": connects,
        "paths": paths,
        "tunnel_vs_veth_throughput": round(
            paths["tunnel"]["throughput_mbit_s_best"] / paths["veth"]["throughput_mbit_s_best"], 3
        ),
        "tunnel_vs_veth_connect_p50": round(
            paths["tunnel"]["connect_us_p50"] / paths["veth"]["connect_us_p50"], 3
        ),
        "target_throughput_ratio": TARGET_RATIO,
    }


def _mtu(nl: Netlink, name: str) -> int:
    link = nl.link(name)
    return link.mtu if link else 0


async def _set_underlay_mtu(bed: Testbed, mtu: int) -> None:
    def set_mtu(nl: Netlink) -> None:
        link = nl.link(UNDERLAY_LINK)
        if link is not None and link.mtu != mtu:
            nl.set_link(link.index, mtu=mtu)

    await in_netns(bed.node, set_mtu)
    await in_netns(bed.vm, set_mtu)


async def _measure(
    client_ns: str, client_ip: str, bed: Testbed, seconds: float, connects: int
) -> tuple[float, list[float]]:
    """One stream's bytes per second, and ``connects`` connect times in microseconds."""
    listener = await socket_in_netns(bed.peer)
    try:
        listener.settimeout(_TIMEOUT)
        listener.bind((str(PEER_IP.ip), 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        rate = await _throughput(listener, client_ns, client_ip, port, seconds)
        times = await _connect_times(listener, client_ns, port, connects)
    finally:
        listener.close()
    return rate, times


async def _throughput(
    listener: socket.socket, client_ns: str, client_ip: str, port: int, seconds: float
) -> float:
    """Bytes per second the peer received from one stream sent by the client for ``seconds``."""
    client = await socket_in_netns(client_ns)
    client.settimeout(_TIMEOUT)

    def receive() -> tuple[int, float]:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(_TIMEOUT)
            buf = bytearray(1 << 20)
            total, started = 0, 0.0
            while n := conn.recv_into(buf):
                if not total:
                    started = time.perf_counter()
                total += n
            return total, time.perf_counter() - started

    def send() -> None:
        with client:
            client.bind((client_ip, 0))
            client.connect((str(PEER_IP.ip), port))
            payload = bytes(CHUNK)
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                client.sendall(payload)
            client.shutdown(socket.SHUT_WR)

    (total, elapsed), _ = await asyncio.gather(asyncio.to_thread(receive), asyncio.to_thread(send))
    return total / elapsed if elapsed > 0 else 0.0


async def _connect_times(listener: socket.socket, client_ns: str, port: int, connects: int) -> list[float]:
    """``connect()`` durations (SYN to established) in microseconds, after one warm-up."""
    count = connects + 1
    socks = await _sockets_in(client_ns, count)

    def accept_all() -> None:
        for _ in range(count):
            conn, _ = listener.accept()
            conn.close()

    def connect_all() -> list[float]:
        times = []
        for sock in socks:
            with sock:
                sock.settimeout(_TIMEOUT)
                started = time.perf_counter()
                sock.connect((str(PEER_IP.ip), port))
                times.append(time.perf_counter() - started)
        return times[1:]

    _, times = await asyncio.gather(asyncio.to_thread(accept_all), asyncio.to_thread(connect_all))
    return [t * 1e6 for t in times]


async def _sockets_in(netns: str, count: int) -> list[socket.socket]:
    return await run_in_netns(netns, lambda: [socket.socket() for _ in range(count)], what="sockets")
