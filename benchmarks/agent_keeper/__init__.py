"""The fd-keeper's relay: what one more local hop per message costs the agent channel.

With an fd-keeper, a resumable shim connection is relayed by the keeper (so a
``kill -9`` of the daemon is exact, docs/survival.md): shim -> keeper ->
socketpair -> daemon -> TLS -> forwarder, and back.  Measured as the
resumable-channel benchmark measures resumability (``agent_resume``): the same
processes (stub agent, the real forwarder CLI, proxies in their own processes),
two proxies with resumability on, one without a keeper (the baseline) and one
whose connections the keeper relays; alternating rounds, paired ratios; the
whole measurement twice with the proxies' roles swapped, the geometric mean of
the two ratios reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.agent_channel import INSTANCE, _forwarder, _free_port, _measure, _process
from cloud_api_adaptor.aio import EVENT_LOOP_ENV, loop_factory
from cloud_api_adaptor.apf import ApfConfig
from cloud_api_adaptor.proxy.tls import AgentTls
from cloud_api_adaptor.settings import TlsSettings


@contextlib.contextmanager
def _keeper(path: Path) -> Iterator[None]:
    proc = subprocess.Popen([sys.executable, "-m", "cloud_api_adaptor.fdkeeper", "--socket", str(path)])
    try:
        for _ in range(200):  # the keeper binds within milliseconds
            if path.exists() or proc.poll() is not None:
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.05)
        if not path.exists():
            raise RuntimeError("the fd-keeper did not start")
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def _once(keeper_first: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="caa-bench-", dir="/tmp") as tmp:
        root = Path(tmp)
        agent_sock, keeper_sock = root / "agent.sock", root / "keeper.sock"
        plain_sock, kept_sock = root / "plain" / "agent.ttrpc", root / "kept" / "agent.ttrpc"
        state = root / "state"
        tls = AgentTls.from_settings(TlsSettings(), state)
        apf = ApfConfig.from_mapping(
            {"pod-namespace": "bench", "pod-name": "bench", **tls.apf_tls_fields(INSTANCE)}
        )
        port = _free_port()
        env = {**os.environ, EVENT_LOOP_ENV: ""}
        proxy = [sys.executable, "-m", "benchmarks.agent_channel.procs", "proxy"]
        common = ["127.0.0.1", str(port), str(state), INSTANCE, "120"]
        with (
            _process([sys.executable, "-m", "benchmarks.agent_channel.procs", "agent", str(agent_sock)]),
            _forwarder(root, apf, port, agent_sock, tls_enabled=True, env=env),
            _keeper(keeper_sock),
            _process([*proxy, str(plain_sock), *common], env=env),
            _process([*proxy, str(kept_sock), *common, str(keeper_sock)], env=env),
        ):
            if keeper_first:
                m = asyncio.run(_measure(kept_sock, plain_sock))
                return {"without": m["channel"], "with": m["direct"], "p50_ratio": 1 / m["p50_ratio"]}
            m = asyncio.run(_measure(plain_sock, kept_sock))
            return {"without": m["direct"], "with": m["channel"], "p50_ratio": m["p50_ratio"]}


def run() -> dict[str, Any]:
    a, b = _once(keeper_first=False), _once(keeper_first=True)

    def p99(one: dict[str, Any]) -> float:
        return float(one["with"]["p99_us"] / one["without"]["p99_us"])

    return {
        "event_loop": "uvloop" if loop_factory("") is not None else "asyncio",
        "without_keeper": a["without"],
        "with_keeper": a["with"],
        "without_keeper_swapped": b["without"],
        "with_keeper_swapped": b["with"],
        "health_p50_ratio_keeper_relay": round(math.sqrt(a["p50_ratio"] * b["p50_ratio"]), 3),
        "health_p99_ratio_keeper_relay": round(math.sqrt(p99(a) * p99(b)), 3),
        "per_run_p50_ratios": [round(a["p50_ratio"], 3), round(b["p50_ratio"], 3)],
    }
