"""A byte relay: listen on the stand's root-side address, forward to a loopback port.

``cloud_api_adaptor.testing.faultproxy.FaultProxy`` listens on 127.0.0.1 only, and
the daemon in the node namespace cannot reach the root namespace's loopback.
This relay listens on the stand's root-side address and passes bytes both ways,
unchanged, to the fault proxy.  End of stream is passed on as a half-close, so
a response the proxy drops (it closes the connection after the upstream acted)
reaches the SDK as the same lost connection.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading

logger = logging.getLogger(__name__)


class TcpRelay:
    def __init__(self, listen_host: str, target: tuple[str, int]) -> None:
        self._listen_host = listen_host
        self._target = target
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closing = False

    @property
    def url(self) -> str:
        if self._listener is None:
            raise RuntimeError("relay not started")
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        listener = socket.create_server((self._listen_host, 0))
        self._listener = listener
        self._spawn(self._accept_loop, listener)

    def stop(self) -> None:
        with self._lock:
            self._closing = True
            sockets = list(self._open)
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in list(self._threads):
            thread.join(10)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._closing:
                return False
            self._open.add(sock)
            return True

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self._spawn(self._serve, client)

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self._target, timeout=10)
        except OSError as exc:
            logger.debug("relay: upstream %s unreachable: %s", self._target, exc)
            client.close()
            return
        upstream.settimeout(None)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if self._track(client) and self._track(upstream):
                self._pump(client, upstream)
        finally:
            with self._lock:
                self._open.discard(client)
                self._open.discard(upstream)
            client.close()
            upstream.close()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        with selectors.DefaultSelector() as sel:
            for sock in (a, b):
                sel.register(sock, selectors.EVENT_READ)
            while sel.get_map():
                for key, _ in sel.select():
                    src = key.fileobj
                    assert isinstance(src, socket.socket)
                    try:
                        data = src.recv(65536)
                    except OSError:
                        return  # reset: drop both ends
                    if not data:
                        sel.unregister(src)
                        with contextlib.suppress(OSError):
                            peer[src].shutdown(socket.SHUT_WR)
                        continue
                    try:
                        peer[src].sendall(data)
                    except OSError:
                        return
