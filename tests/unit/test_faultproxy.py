"""The fault proxy on its own: REST matching by method and path, canned answers, HTTPS on both sides."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cloud_api_adaptor.testing.faultproxy import Fault, FaultProxy
from cloud_api_adaptor.testing.https import TestCA


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[str] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        _Upstream.seen.append(f"{self.command} {self.path}")
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def tls(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "ca")


@pytest.fixture
def upstream(tls: TestCA) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.socket = tls.server_context().wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Upstream.seen = []
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _call(proxy: FaultProxy, tls: TestCA, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    port = int(proxy.url.rsplit(":", 1)[1])
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=tls.client_context())
    try:
        conn.request(method, path, body=b"{}" if method == "PUT" else None)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_https_on_both_sides_with_rest_rules_matched_by_method_and_path(tls: TestCA, upstream: str) -> None:
    vm = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/vm1?api-version=1"
    with FaultProxy(
        upstream, server_context=tls.server_context(), upstream_context=tls.client_context()
    ) as proxy:
        assert proxy.url.startswith("https://127.0.0.1:")
        proxy.add_rule(
            "*",
            Fault.RESPOND,
            method="PUT",
            path=r"/virtualMachines/[^/]+$",
            status=429,
            headers={"Retry-After": "1"},
            body=b'{"error":{"code":"TooManyRequests"}}',
        )
        assert _call(proxy, tls, "GET", vm)[0] == 200  # the method does not match: forwarded
        status, headers, body = _call(proxy, tls, "PUT", vm)
        assert (status, headers["Retry-After"], json.loads(body)["error"]["code"]) == (
            429,
            "1",
            "TooManyRequests",
        )
        assert _call(proxy, tls, "PUT", vm)[0] == 200  # the rule was used up
        assert proxy.pending_rules() == []
        assert [r.fault for r in proxy.requests()] == [None, Fault.RESPOND, None]
    assert _Upstream.seen == [f"GET {vm}", f"PUT {vm}"]  # the canned answer never reached the upstream


def test_an_https_upstream_without_a_context_is_refused(upstream: str) -> None:
    with pytest.raises(ValueError, match="upstream_context"):
        FaultProxy(upstream)
