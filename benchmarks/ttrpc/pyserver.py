"""The Python side of the ttrpc benchmark: our Server answering hypervisor Version, in its own process.

    python -m benchmarks.ttrpc.pyserver SOCKET

Prints ``READY SOCKET LOOP`` once listening; serves until SIGTERM/SIGINT.  Run as a
separate process so it gets its own interpreter and core, like the Go server.
The event loop is chosen as ``cloud-api-adaptor serve`` chooses it: uvloop when
installed, the stock asyncio loop with ``CAA_EVENT_LOOP=asyncio``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from cloud_api_adaptor._pb import hypervisor_pb2 as hv
from cloud_api_adaptor.aio import EVENT_LOOP_ENV, run
from cloud_api_adaptor.ttrpc import CallContext, Server, UnaryMethod


async def _version(req: hv.VersionRequest, ctx: CallContext) -> hv.VersionResponse:
    return hv.VersionResponse(version="0.0.0")


async def serve(path: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with Server() as server:
        server.add_service("hypervisor.Hypervisor", {"Version": UnaryMethod(hv.VersionRequest, _version)})
        await server.start_unix(path)
        print("READY", path, type(loop).__module__.partition(".")[0], flush=True)
        await stop.wait()


if __name__ == "__main__":
    run(serve(Path(sys.argv[1])), event_loop=os.environ.get(EVENT_LOOP_ENV, ""))
