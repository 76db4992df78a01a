"""A routed JSON HTTP server on a loopback (or test namespace) address, for the IBM Cloud fakes.

Each fake registers ``(method, path regex) -> handler`` routes; a handler gets the
parsed request and returns ``Reply``.  Every route except IAM's token endpoint
requires a bearer token the fake IAM issued (``iam.FakeIam.check``), so the
SDK's real token flow must run.  A threaded stdlib server: SDK calls come from
worker threads, and one state lock per fake keeps it consistent.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: Mapping[str, str]
    body: bytes
    match: re.Match[str] | None = None

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError as exc:
            raise Refusal(400, "bad_request", f"body is not JSON: {exc}") from exc

    def form(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.body.decode(), keep_blank_values=True))


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class Refusal(Exception):
    """What the cloud answers when it refuses a request (VPC's error document shape)."""

    def __init__(self, status: int, code: str, message: str, target: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.target = target

    def reply(self) -> Reply:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.target:
            error["target"] = {"name": self.target, "type": "field"}
        return Reply(self.status, {"errors": [error], "trace": "fake-trace"})


Handler = Callable[[Request], Reply]
Authorizer = Callable[[Request], None]


@dataclass
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    public: bool = False


class FakeServer:
    """One listener serving every registered fake (IAM, VPC, tagging, search, PowerVS)."""

    def __init__(self, host: str = "127.0.0.1", server_context: ssl.SSLContext | None = None) -> None:
        """``server_context`` serves HTTPS (the SDK then needs the test CA, e.g. REQUESTS_CA_BUNDLE)."""
        self._host = host
        self._context = server_context
        self._routes: list[Route] = []
        self._authorize: Authorizer | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def route(self, method: str, pattern: str, handler: Handler, *, public: bool = False) -> None:
        self._routes.append(Route(method, re.compile(f"^{pattern}$"), handler, public))

    def require_auth(self, authorize: Authorizer) -> None:
        self._authorize = authorize

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        scheme = "https" if self._context is not None else "http"
        return f"{scheme}://{host!s}:{port}"

    def start(self) -> FakeServer:
        server = _Server((self._host, 0), _handler_for(self))
        if self._context is not None:
            server.socket = self._context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="ibm-fake", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None
        self._thread = None

    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def dispatch(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append((request.method, request.path))
        for route in self._routes:
            match = route.pattern.match(request.path)
            if match is None or route.method != request.method:
                continue
            request.match = match
            try:
                if not route.public and self._authorize is not None:
                    self._authorize(request)
                return route.handler(request)
            except Refusal as refusal:
                return refusal.reply()
        return Refusal(404, "not_found", f"no route for {request.method} {request.path}").reply()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("ibm fake: error serving %s", client_address, exc_info=True)


def _handler_for(fake: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("ibm fake: " + format, *args)

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
            headers = {k.lower(): v for k, v in self.headers.items()}
            reply = fake.dispatch(Request(self.command, parts.path, query, headers, body))
            data = b"" if reply.body is None else json.dumps(reply.body).encode()
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = _serve
        do_POST = _serve
        do_PUT = _serve
        do_PATCH = _serve
        do_DELETE = _serve

    return Handler
