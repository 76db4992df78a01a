"""A fault-injecting reverse HTTP proxy for tests: put it between an SDK and a local emulator.

The SDK's endpoint URL points at the proxy; the proxy forwards each request to the
upstream (moto, a cloud fake) unless a rule matches.  Rules match on the API action
(the ``Action`` form field of AWS query APIs such as EC2, else the ``X-Amz-Target``
header, else the request path), and optionally on the HTTP method and a regular
expression searched in the path (REST APIs: ``method="PUT", path=r"/virtualMachines/"``),
and inject one fault per match:

- ``DROP_RESPONSE``: forward the request, let the upstream act on it, then close
  the connection without answering (the "lost response" case for idempotency);
- ``UNAVAILABLE``: answer 503 with an empty body, without forwarding;
- ``THROTTLE``: answer 503 with EC2's ``RequestLimitExceeded`` XML, without forwarding;
- ``DELAY``: wait ``delay`` seconds, then forward;
- ``RESPOND``: answer with the rule's ``status``, ``headers`` and ``body`` without
  forwarding (a 429 with ``Retry-After``, a cloud's own error document, ...).

Both sides may speak TLS: ``server_context`` makes the proxy listen with HTTPS (the
SDK then needs the test CA), ``upstream_context`` lets it forward to an HTTPS fake.

Every request is recorded (action, decoded form parameters, fault applied) so
tests can count API calls per action and assert on what was sent on the wire.

It is a threaded stdlib server so it serves SDK calls made from worker threads
and from synchronous code alike.  It listens on, and forwards to, loopback only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import http
import http.client
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
)
_NOT_COPIED = _HOP_BY_HOP | {"content-length", "server", "date"}
_THROTTLE_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Response><Errors><Error><Code>RequestLimitExceeded</Code>"
    b"<Message>Request limit exceeded.</Message></Error></Errors>"
    b"<RequestID>faultproxy-throttle</RequestID></Response>"
)


class Fault(enum.Enum):
    """What to do to a matching request."""

    DROP_RESPONSE = "drop-response"
    UNAVAILABLE = "unavailable"
    THROTTLE = "throttle"
    DELAY = "delay"
    RESPOND = "respond"


@dataclass
class FaultRule:
    """Apply ``fault`` to the next ``times`` requests for ``action`` ("*" matches any action).

    ``method`` and ``path`` (a regular expression searched in the path, query
    excluded) narrow the match further; ``status``, ``headers`` and ``body`` are
    the answer of a ``RESPOND`` fault.
    """

    action: str
    fault: Fault
    times: int = 1
    delay: float = 0.0
    method: str | None = None
    path: str | None = None
    status: int = 503
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def matches(self, action: str, method: str, path: str) -> bool:
        if self.times <= 0 or self.action not in (action, "*"):
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path is None or re.search(self.path, urllib.parse.urlsplit(path).path) is not None


@dataclass(frozen=True)
class RecordedRequest:
    """One request the proxy received."""

    action: str
    method: str
    path: str
    #: decoded form (or query) parameters; AWS query APIs put everything here
    params: dict[str, str]
    fault: Fault | None


class FaultProxy:
    """A reverse proxy on 127.0.0.1 in front of ``upstream`` (``http://127.0.0.1:PORT``)."""

    def __init__(
        self,
        upstream: str,
        *,
        upstream_timeout: float = 30.0,
        server_context: ssl.SSLContext | None = None,
        upstream_context: ssl.SSLContext | None = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.port is None:
            raise ValueError(f"upstream must be http(s)://HOST:PORT, got {upstream!r}")
        if not _is_loopback(parsed.hostname):
            raise ValueError(f"upstream {parsed.hostname!r} is not a loopback address")
        if (parsed.scheme == "https") != (upstream_context is not None):
            raise ValueError("an https upstream needs upstream_context (and only an https one)")
        self._upstream = (parsed.hostname, parsed.port)
        self._upstream_context = upstream_context
        self._server_context = server_context
        self._upstream_timeout = upstream_timeout
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._log: list[RecordedRequest] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        server = _Server(("127.0.0.1", 0), _make_handler(self))
        if self._server_context is not None:
            server.socket = self._server_context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="faultproxy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None
        self._thread = None

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The endpoint URL to give the SDK."""
        if self._server is None:
            raise RuntimeError("fault proxy is not started")
        host, port = self._server.server_address[:2]
        scheme = "https" if self._server_context is not None else "http"
        return f"{scheme}://{host!s}:{port}"

    # -- rules and records -------------------------------------------------------------------------------

    def add_rule(
        self,
        action: str,
        fault: Fault,
        *,
        times: int = 1,
        delay: float = 0.0,
        method: str | None = None,
        path: str | None = None,
        status: int = 503,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> None:
        rule = FaultRule(
            action, fault, times, delay, method, path, status, tuple((headers or {}).items()), body
        )
        with self._lock:
            self._rules.append(rule)

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def pending_rules(self) -> list[FaultRule]:
        """Rules with uses left (a test can assert every injected fault fired)."""
        with self._lock:
            return [dataclasses.replace(r) for r in self._rules if r.times > 0]

    def requests(self, action: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self._log if action is None or r.action == action]

    def counts(self) -> Counter[str]:
        """Requests received per action (faulted ones included)."""
        with self._lock:
            return Counter(r.action for r in self._log)

    def count(self, action: str | None = None) -> int:
        """Requests received for ``action``, or in all."""
        with self._lock:
            return sum(1 for r in self._log if action is None or r.action == action)

    def reset(self) -> None:
        """Forget recorded requests and rules."""
        with self._lock:
            self._log.clear()
            self._rules.clear()

    # -- called from handler threads ---------------------------------------------------------------------

    def _take_fault(self, action: str, method: str, path: str) -> FaultRule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(action, method, path):
                    rule.times -= 1
                    return dataclasses.replace(rule)
        return None

    def _record(self, entry: RecordedRequest) -> None:
        with self._lock:
            self._log.append(entry)

    def _forward(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn: http.client.HTTPConnection
        if self._upstream_context is not None:
            conn = http.client.HTTPSConnection(
                *self._upstream, timeout=self._upstream_timeout, context=self._upstream_context
            )
        else:
            conn = http.client.HTTPConnection(*self._upstream, timeout=self._upstream_timeout)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            data = response.read()
            return response.status, response.reason, response.getheaders(), data
        finally:
            conn.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog is 5: a burst of concurrent SDK calls would have
    # connections dropped and retried by TCP a second later
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that hung up mid-reply is expected here; never print tracebacks to stderr
        logger.debug("faultproxy: error serving %s", client_address, exc_info=True)


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _action_of(path: str, headers: Any, body: bytes) -> tuple[str, dict[str, str]]:
    query = urllib.parse.urlsplit(path).query
    params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    content_type = headers.get("Content-Type", "")
    if body and "x-www-form-urlencoded" in content_type:
        params.update(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    if "Action" in params:
        return params["Action"], params
    target = headers.get("X-Amz-Target", "")
    if target:
        return target.rsplit(".", 1)[-1], params
    return urllib.parse.urlsplit(path).path, params


def _make_handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # headers and body go out in separate writes: without this, Nagle + delayed ACK add 40 ms
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("faultproxy: " + format, *args)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            action, params = _action_of(self.path, self.headers, body)
            rule = proxy._take_fault(action, self.command, self.path)
            fault = rule.fault if rule else None
            proxy._record(RecordedRequest(action, self.command, self.path, params, fault))
            if rule is not None and rule.fault is Fault.UNAVAILABLE:
                self._reply(503, "Service Unavailable", [], b"")
                return
            if rule is not None and rule.fault is Fault.THROTTLE:
                self._reply(503, "Service Unavailable", [("Content-Type", "text/xml")], _THROTTLE_BODY)
                return
            if rule is not None and rule.fault is Fault.RESPOND:
                self._reply(rule.status, _reason(rule.status), list(rule.headers), rule.body)
                return
            if rule is not None and rule.fault is Fault.DELAY:
                time.sleep(rule.delay)
            try:
                status, reason, headers, data = proxy._forward(
                    self.command, self.path, list(self.headers.items()), body
                )
            except OSError as exc:
                logger.debug("faultproxy: upstream failed: %s", exc)
                self._reply(502, "Bad Gateway", [], b"")
                return
            if rule is not None and rule.fault is Fault.DROP_RESPONSE:
                # the upstream acted on the request; the client never hears of it
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            self._reply(status, reason, headers, data)

        def _reply(self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes) -> None:
            self.send_response_only(status, reason)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP and name.lower() not in (
                    "content-length",
                    "server",
                    "date",
                ):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = _handle
        do_POST = _handle
        do_PUT = _handle
        do_DELETE = _handle
        do_HEAD = _handle
        do_PATCH = _handle

    return Handler
