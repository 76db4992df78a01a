"""Helper processes for the agent-channel benchmark: the stub agent and the worker-side proxy.

``python -m benchmarks.agent_channel.procs agent SOCKET``
``python -m benchmarks.agent_channel.procs proxy SOCKET HOST PORT STATE_DIR INSTANCE [RESUME_WINDOW]``

Each prints ``READY`` once serving and runs until SIGTERM, so every hop of the
channel has its own process (and event loop), as in a real deployment.  The
proxy runs on the loop the daemon uses (``aio.run``: uvloop unless
``CAA_EVENT_LOOP=asyncio``); the stub agent, part of the baseline, on asyncio's.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from cloud_api_adaptor.aio import EVENT_LOOP_ENV, run
from cloud_api_adaptor.proxy.agent_proxy import AgentChannel
from cloud_api_adaptor.proxy.testing import StubAgent
from cloud_api_adaptor.proxy.tls import AgentTls
from cloud_api_adaptor.settings import TlsSettings
from cloud_api_adaptor.transport.custody import SocketCustody
from cloud_api_adaptor.transport.keeper_link import KeeperLink


async def _until_term() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("READY", flush=True)
    await stop.wait()


async def agent(path: str) -> None:
    async with StubAgent(Path(path)):
        await _until_term()


async def proxy(
    path: str,
    host: str,
    port: str,
    state_dir: str,
    instance: str,
    resume_window: str = "0",
    keeper: str = "",
) -> None:
    """``keeper``: an fd-keeper's socket: shim connections go through its relay."""
    tls = AgentTls.from_settings(TlsSettings(disabled=state_dir == "-"), Path(state_dir))
    custody = SocketCustody(keeper=KeeperLink(Path(keeper))) if keeper else None
    channel = AgentChannel(tls, resume_window=float(resume_window), custody=custody)
    p = channel.new_proxy(Path(path), instance)
    await p.start(host, int(port), timeout=60)
    try:
        await _until_term()
    finally:
        await p.aclose()
        if custody is not None:
            custody.close()


if __name__ == "__main__":
    kind, *args = sys.argv[1:]
    if kind == "agent":
        asyncio.run(agent(*args))
    else:
        run(proxy(*args), event_loop=os.environ.get(EVENT_LOOP_ENV, ""))
