"""The optional gRPC socket, fronted by a listener of our own so that it can be handed over.

gRPC's server binds its unix socket itself, cannot serve one it inherited, and
unlinks the path when it stops: served directly, the socket file would vanish
for the length of every hand-over.  So the daemon runs gRPC on a private socket
and serves the public path (``GRPC_ENDPOINT``) with a plain listening socket
that is passed to the next daemon like the others (docs/survival.md); each
connection accepted there is relayed byte for byte to the private socket.
Connections made during a hand-over wait in the backlog.  Established gRPC
connections are closed with the daemon; gRPC clients reconnect by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

import grpc

from cloud_api_adaptor.aio import TaskSupervisor
from cloud_api_adaptor.transport.custody import SocketCustody
from cloud_api_adaptor.transport.fdpass import bind_unix_listener
from cloud_api_adaptor.transport.pump import Pipe, close_pipes, link

logger = logging.getLogger(__name__)


class GrpcFront:
    """Relays connections from the public gRPC socket to gRPC's private one."""

    def __init__(self, server: grpc.aio.Server, public: Path, private: Path) -> None:
        self.server = server
        self.public = public
        self.private = private
        self._server: asyncio.AbstractServer | None = None
        self._pipes: set[Pipe] = set()
        self._tasks = TaskSupervisor("grpc-front")

    @classmethod
    async def start(
        cls, server: grpc.aio.Server, public: Path, private: Path, custody: SocketCustody
    ) -> GrpcFront:
        """Start ``server`` on ``private`` and serve ``public`` (passed on by a previous daemon, or bound)."""
        private.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            private.unlink()
        server.add_insecure_port(f"unix://{private}")
        await server.start()
        os.chmod(private, 0o600)
        front = cls(server, public, private)
        listener = custody.take_listener(public) or bind_unix_listener(public, 0o600)
        custody.keep_listener(public, listener)
        listener.setblocking(False)
        front._server = await asyncio.get_running_loop().create_unix_server(front._accept, sock=listener)
        return front

    def _accept(self) -> Pipe:
        down = Pipe(downstream=True)
        self._track(down)
        self._tasks.spawn(self._connect(down), name="grpc-front-dial")
        return down

    def _track(self, pipe: Pipe) -> None:
        self._pipes.add(pipe)
        pipe.closed.add_done_callback(lambda _f: self._pipes.discard(pipe))

    async def _connect(self, down: Pipe) -> None:
        up = Pipe()
        try:
            await down.connected
            await asyncio.get_running_loop().create_unix_connection(lambda: up, os.fspath(self.private))
        except (OSError, ConnectionError) as exc:
            logger.warning("gRPC socket: cannot reach the gRPC server: %s", exc)
            down.close()
            return
        except BaseException:
            down.close()
            raise
        self._track(up)
        link(down, up)

    def close(self) -> None:
        """Stop accepting (the listening socket itself belongs to the custody)."""
        if self._server is not None:
            self._server.close()

    async def stop(self, grace: float) -> None:
        """Stop accepting, let gRPC finish its calls within ``grace``, close the relays."""
        self.close()
        await self.server.stop(grace)
        await self._tasks.aclose()
        await close_pipes(self._pipes, grace=1.0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
