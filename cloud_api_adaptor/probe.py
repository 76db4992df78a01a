"""The startup probe (``127.0.0.1:PROBE_PORT/startup``) and Prometheus metrics.

``/startup`` answers 200 once the hypervisor socket accepts connections, 500
before, like the Go version.  ``/metrics`` serves the daemon's registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

logger = logging.getLogger(__name__)


class ProbeServer:
    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        self._host = host
        self._port = port
        self._registry = registry
        self._ready = False
        self._server: asyncio.Server | None = None

    def set_ready(self) -> None:
        self._ready = True

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in {b"\r\n", b"\n", b""}:
                pass
            parts = line.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else ""
            if path == "/startup":
                status, body, ctype = (
                    (200, b"OK\n", "text/plain") if self._ready else (500, b"not ready\n", "text/plain")
                )
            elif path == "/metrics":
                status, body, ctype = 200, generate_latest(self._registry), CONTENT_TYPE_LATEST
            else:
                status, body, ctype = 404, b"not found\n", "text/plain"
            reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}[status]
            head = (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
