"""agent-protocol-forwarder: the pod VM's end of the agent channel.

It listens on TCP (mutual TLS unless ``-disable-tls``) and relays each accepted
connection to the kata-agent's unix socket.  The client-to-agent direction runs
through ``interceptor.FrameRewriter`` (two calls are rewritten, every other frame
passes byte-identical); the agent-to-client direction is a plain byte pump.
Relaying frames instead of terminating ttrpc (as the Go forwarder does) keeps
one decode off every call and lets any agent method, present or future, through.

Start-up order follows the Go daemon: read apf.json, build the TLS context
(fail fast on bad material), set up the pod network when apf.json carries one,
listen, then tell systemd READY=1 (the unit is ``Type=notify``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud_api_adaptor.aio import TaskSupervisor, shielded
from cloud_api_adaptor.apf import DEFAULT_APF_CONFIG_PATH, ApfConfig
from cloud_api_adaptor.errors import ConfigError, InvalidInput
from cloud_api_adaptor.transport.pump import Pipe, PumpStats, close_pipes, link
from cloud_api_adaptor.transport.resume import ALPN
from cloud_api_adaptor.transport.tls import CertKeyPair, TlsProfile, make_server_context
from cloud_api_adaptor.vm.interceptor import FrameRewriter, Interceptor
from cloud_api_adaptor.vm.sessions import AlpnDispatch, ResumableSessions
from cloud_api_adaptor.wire import FORWARDER_PORT

logger = logging.getLogger(__name__)

DEFAULT_LISTEN = f"0.0.0.0:{FORWARDER_PORT}"
DEFAULT_AGENT_SOCKET = "/run/kata-containers/agent.sock"
DEFAULT_POD_NAMESPACE = "/run/netns/podns"

NetworkSetup = Callable[[ApfConfig], Awaitable[None]]
Ready = Callable[[tuple[str, int]], None]


@dataclass(frozen=True)
class ForwarderSettings:
    """The forwarder's command line, validated once by the CLI."""

    config_path: Path = Path(DEFAULT_APF_CONFIG_PATH)
    listen: str = DEFAULT_LISTEN
    kata_agent_socket: Path = Path(DEFAULT_AGENT_SOCKET)
    pod_namespace: str = DEFAULT_POD_NAMESPACE
    host_interface: str = ""
    ca_cert_file: str = ""
    cert_file: str = ""
    cert_key: str = ""
    skip_verify: bool = False
    disable_tls: bool = False
    tls_min_version: str = ""
    """Overrides apf.json ``tls-min-version`` when set."""
    tls_cipher_suites: tuple[str, ...] = ()
    """Override apf.json ``tls-cipher-suites`` when set."""
    agent_timeout: float = 150.0
    """Seconds a connection waits for the kata-agent socket to accept."""
    notify_socket: str = field(default="")
    """``$NOTIFY_SOCKET`` from systemd (read by the CLI), empty when not under systemd."""
    event_loop: str = ""
    """``$CAA_EVENT_LOOP`` (read by the CLI): empty = uvloop when installed, ``asyncio`` = stock loop."""
    resume_window: float = 600.0
    """Seconds a resumable session (and its agent connection) waits for the worker to come back; 0: off."""
    resume_keepalive: float = 1.0
    """Seconds between keep-alive ACKs on a resumable link."""
    resume_dead_after: float = 5.0
    """A resumable link that brought nothing for this long is dropped (the worker redials)."""


@dataclass
class ForwarderStats(PumpStats):
    connections_total: int = 0
    connections_active: int = 0
    agent_dial_failures: int = 0


def parse_listen(address: str) -> tuple[str, int]:
    """Go's ``host:port`` (``[v6]:port``, ``:port`` = every interface)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError("listen", f"invalid listen address {address!r}: expected host:port")
    host = host.removeprefix("[").removesuffix("]")
    return host or "0.0.0.0", int(port_text)


def load_apf_config(path: Path) -> ApfConfig:
    """Read apf.json; errors carry the Go forwarder's wording."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError("config", f"failed to open {path}: {exc.strerror or exc}") from exc
    try:
        return ApfConfig.from_json(text)
    except InvalidInput as exc:
        raise ConfigError(
            "config", f"failed to decode a Agent Protocol Forwarder config file {path}: {exc}"
        ) from exc


def _read(key: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from exc


def build_server_context(settings: ForwarderSettings, apf: ApfConfig) -> ssl.SSLContext | None:
    """The listener's context: files from the command line win over apf.json, as in Go."""
    if settings.disable_tls:
        logger.warning("TLS is disabled: the agent channel is plain TCP")
        return None
    if bool(settings.cert_file) != bool(settings.cert_key):
        raise ConfigError(
            "cert-key" if settings.cert_file else "cert-file", "-cert-file and -cert-key go together"
        )
    if settings.cert_file:
        server = CertKeyPair(_read("cert-file", settings.cert_file), _read("cert-key", settings.cert_key))
    elif apf.tls_server_cert and apf.tls_server_key:
        server = CertKeyPair(apf.tls_server_cert.encode(), apf.tls_server_key.encode())
    else:
        raise ConfigError(
            "cert-file",
            "no server certificate: set -cert-file/-cert-key, tls-server-cert/-key in apf.json, "
            "or -disable-tls",
        )
    client_ca = (
        _read("ca-cert-file", settings.ca_cert_file) if settings.ca_cert_file else apf.tls_client_ca.encode()
    )
    if client_ca and settings.skip_verify:
        raise ConfigError(
            "tls-skip-verify", "specifying a root certificates file with the insecure flag is not allowed"
        )
    profile = TlsProfile.parse(
        settings.tls_min_version or apf.tls_min_version,
        settings.tls_cipher_suites or apf.tls_cipher_suites,
        version_key="tls-min-version",
        suites_key="tls-cipher-suites",
    )
    return make_server_context(server=server, client_ca_pem=client_ca or None, profile=profile)


def sd_notify(state: str, notify_socket: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to systemd's notification socket; False if unset."""
    if not notify_socket:
        return False
    address = "\0" + notify_socket[1:] if notify_socket.startswith("@") else notify_socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        logger.warning("sd_notify %s failed: %s", state, exc)
        return False
    return True


class Forwarder:
    """The TLS listener and its relays; ``start`` binds, ``aclose`` closes everything."""

    def __init__(self, settings: ForwarderSettings, ssl_context: ssl.SSLContext | None) -> None:
        self._settings = settings
        self._ssl = ssl_context
        self._interceptor = Interceptor(settings.pod_namespace)
        self._server: asyncio.AbstractServer | None = None
        self._pipes: set[Pipe] = set()
        self._tasks = TaskSupervisor("forwarder")
        self._closed = False
        self.stats = ForwarderStats()
        self.sessions: ResumableSessions | None = None
        self._bound: tuple[str, int] | None = None
        if ssl_context is not None and settings.resume_window > 0:
            # Offered by ALPN: a worker that does not ask for it gets the plain relay.
            ssl_context.set_alpn_protocols([ALPN])
            self.sessions = ResumableSessions(
                self._tasks,
                self.stats,
                connect_agent=self._dial_agent,
                new_filter=lambda: FrameRewriter(self._interceptor).feed,
                window=settings.resume_window,
                keepalive=settings.resume_keepalive,
                dead_after=settings.resume_dead_after,
            )

    async def start(self) -> tuple[str, int]:
        """Bind and listen; returns the bound address (useful with port 0)."""
        host, port = parse_listen(self._settings.listen)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                self._accept_any, host, port, ssl=self._ssl, reuse_address=True
            )
        except OSError as exc:
            raise ConfigError(
                "listen", f"cannot listen on {self._settings.listen}: {exc.strerror or exc}"
            ) from exc
        bound = self._server.sockets[0].getsockname()
        self._bound = (bound[0], bound[1])
        logger.info(
            "listening on %s:%d (%s), relaying to %s",
            bound[0],
            bound[1],
            "mTLS"
            if self._ssl is not None and self._ssl.verify_mode == ssl.CERT_REQUIRED
            else ("TLS" if self._ssl is not None else "plain TCP"),
            self._settings.kata_agent_socket,
        )
        return bound[0], bound[1]

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if self.sessions is not None:
            await self.sessions.aclose()
        await self._tasks.aclose()
        await close_pipes(self._pipes)
        if server is not None:
            await server.wait_closed()

    async def restart_listener(self, down_for: float = 0.0) -> tuple[str, int]:
        """Close the TLS listener and every resumable link, then listen again on the same address.

        Agent connections (and plain relays) stay; resumable sessions wait for the
        worker to resume.  ``down_for``: seconds without a listener (connects are
        refused meanwhile).  Used by tests, benchmarks and SIGHUP.
        """
        server, self._server = self._server, None
        if server is None or self._bound is None:
            raise RuntimeError("the forwarder is not listening")
        bound = self._bound
        server.close()
        if self.sessions is not None:
            self.sessions.drop_links()
        await server.wait_closed()
        if down_for > 0:
            await asyncio.sleep(down_for)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._accept_any, bound[0], bound[1], ssl=self._ssl, reuse_address=True
        )
        return bound[0], bound[1]

    def _accept_any(self) -> asyncio.BaseProtocol:
        if self.sessions is None:
            return self._accept()
        # The choice between a plain relay and a resumable session is made once TLS
        # (and with it ALPN) is done.
        return AlpnDispatch(self.sessions, self._accept)

    def _accept(self) -> Pipe:
        # The factory runs at TCP accept time; with TLS, connection_made comes only
        # after a successful handshake (a refused client never reaches it), so all
        # work is attached to ``connected``.
        down = Pipe(self.stats, downstream=True, filter=FrameRewriter(self._interceptor).feed)
        down.connected.add_done_callback(lambda f: self._on_connected(down, f))
        return down

    def _on_connected(self, down: Pipe, fut: asyncio.Future[None]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        if self._closed:
            down.close()
            return
        self.stats.connections_total += 1
        self.stats.connections_active += 1
        self._track(down, counted=True)
        self._tasks.spawn(self._connect_agent(down), name="forwarder-agent-dial")

    def _track(self, pipe: Pipe, *, counted: bool = False) -> None:
        self._pipes.add(pipe)

        def forget(_f: asyncio.Future[None]) -> None:
            self._pipes.discard(pipe)
            if counted:
                self.stats.connections_active -= 1

        pipe.closed.add_done_callback(forget)

    async def _connect_agent(self, down: Pipe) -> None:
        up = Pipe(self.stats)
        if await self._dial_agent(lambda: up, down.closed):
            self._track(up)
            link(down, up)
        else:
            down.close()

    async def _dial_agent(
        self, protocol: Callable[[], asyncio.BaseProtocol], gone: asyncio.Future[Any]
    ) -> bool:
        """Dial the agent socket, waiting (bounded) for it to appear and accept; False on failure.

        ``gone`` completing (the client left) stops the wait.
        """
        loop = asyncio.get_running_loop()
        path = str(self._settings.kata_agent_socket)
        deadline = loop.time() + self._settings.agent_timeout
        delay = 0.05
        attempts = 0
        while True:
            try:
                await loop.create_unix_connection(protocol, path)
                return True
            except OSError as exc:
                attempts += 1
                self.stats.agent_dial_failures += 1
                if gone.done():
                    return False
                if loop.time() + delay > deadline:
                    logger.error(
                        "kata-agent socket %s not reachable after %d attempts: %s", path, attempts, exc
                    )
                    return False
                if attempts == 1:
                    logger.info("waiting for the kata-agent socket %s: %s", path, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def run_forwarder(
    config: ForwarderSettings,
    stop: asyncio.Event,
    ready: Ready | None = None,
    *,
    network_setup: NetworkSetup | None = None,
    apf: ApfConfig | None = None,
    restart: asyncio.Event | None = None,
) -> None:
    """Run until ``stop`` is set; ``ready`` gets the bound address once listening.

    ``restart`` (SIGHUP in the CLI) closes and re-opens the listener, dropping
    every resumable link (their sessions wait to be resumed).

    ``network_setup`` (provided by the pod-network code) runs before listening
    when apf.json carries a ``pod-network``; None skips it.
    """
    apf = apf if apf is not None else load_apf_config(config.config_path)
    logger.info("pod %s/%s", apf.pod_namespace, apf.pod_name)
    ssl_context = build_server_context(config, apf)
    if apf.pod_network is not None and network_setup is not None:
        await network_setup(apf)
    forwarder = Forwarder(config, ssl_context)
    try:
        address = await forwarder.start()
        sd_notify("READY=1", config.notify_socket)
        if ready is not None:
            ready(address)
        while True:
            if restart is None:
                await stop.wait()
                break
            stopping = asyncio.ensure_future(stop.wait())
            restarting = asyncio.ensure_future(restart.wait())
            await asyncio.wait([stopping, restarting], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            restarting.cancel()
            if stop.is_set():
                break
            restart.clear()
            logger.info("restarting the listener")
            await forwarder.restart_listener()
        logger.info("stopping")
    finally:
        sd_notify("STOPPING=1", config.notify_socket)
        await shielded(forwarder.aclose())
