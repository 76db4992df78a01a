"""A connected client/server pair without a listening socket, for tests.

``ClientFor(server)`` connects a ``Client`` to ``server`` over a socketpair, so
tests exercise the real frame loop on both sides without touching the file
system (cf. grpclib's ``ChannelFor``).  The server is not started, closed or
otherwise owned by the pair.

    async with ClientFor(server) as client:
        reply = await client.call("hypervisor.Hypervisor", "Version", req, VersionResponse)
"""

from __future__ import annotations

import socket
from types import TracebackType

from cloud_api_adaptor.ttrpc.client import Client
from cloud_api_adaptor.ttrpc.server import Server


class ClientFor:
    """Async context manager yielding a ``Client`` connected to ``server`` in memory."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._client: Client | None = None

    async def __aenter__(self) -> Client:
        server_end, client_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await self._server.serve_socket(server_end)
        except BaseException:
            server_end.close()
            client_end.close()
            raise
        try:
            self._client = await Client.connect_socket(client_end)
        except BaseException:
            client_end.close()
            raise
        return self._client

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
