"""The fake's HTTPS face: ARM paths for VMs, NICs, public IPs, subnets, NSGs, SKUs, usages and
images; operation status URLs; and a Microsoft Entra token endpoint.

Every ARM call must carry a bearer token this fake issued at its token endpoint
(client secret, or a workload identity's federated token as client assertion);
the scope asked must be ``<ARM endpoint>/.default``.  Each VM PUT body is
validated against the published ``VirtualMachine`` schema (``schema.py``): what
fails is refused (400 ``InvalidRequestContent``) and recorded in ``violations``.
Links the fake hands out (``Azure-AsyncOperation``, ``Location``, ``nextLink``)
use the request's ``Host``, so they lead back through whatever proxy the client used.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import ssl
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cloud_api_adaptor.testing.https import TestCA

from . import schema
from .errors import ArmError
from .state import TENANT, ArmState, Json, Operation

_S = r"/subscriptions/(?P<sub>[^/]+)"
_G = _S + r"/resourceGroups/(?P<group>[^/]+)"
_C = _G + r"/providers/Microsoft\.Compute"
_N = _G + r"/providers/Microsoft\.Network"
ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (m, re.compile(p + "$", re.IGNORECASE), h)
    for m, p, h in [
        ("PUT", _C + r"/virtualMachines/(?P<name>[^/]+)", "virtualMachines.createOrUpdate"),
        ("GET", _C + r"/virtualMachines/(?P<name>[^/]+)", "virtualMachines.get"),
        ("DELETE", _C + r"/virtualMachines/(?P<name>[^/]+)", "virtualMachines.delete"),
        ("GET", _C + r"/virtualMachines", "virtualMachines.list"),
        (
            "GET",
            _S + r"/providers/Microsoft\.Compute/locations/(?P<loc>[^/]+)/operations/(?P<op>[^/]+)",
            "operations.get",
        ),
        ("GET", _S + r"/providers/Microsoft\.Compute/locations/(?P<loc>[^/]+)/usages", "usage.list"),
        ("GET", _S + r"/providers/Microsoft\.Compute/skus", "resourceSkus.list"),
        ("GET", _C + r"/galleries/(?P<rest>.+)", "galleryImages.get"),
        ("GET", _N + r"/networkInterfaces/(?P<name>[^/]+)", "networkInterfaces.get"),
        ("GET", _N + r"/publicIPAddresses/(?P<name>[^/]+)", "publicIPAddresses.get"),
        ("GET", _N + r"/virtualNetworks/(?P<vnet>[^/]+)/subnets/(?P<name>[^/]+)", "subnets.get"),
        ("GET", _N + r"/networkSecurityGroups/(?P<name>[^/]+)", "networkSecurityGroups.get"),
        ("GET", _G, "resourceGroups.get"),
    ]
]


class FakeArm:
    """State, the token endpoint's identities, the request log, behind any number of HTTPS listeners."""

    def __init__(self, directory: Path, state: ArmState | None = None) -> None:
        self.state = state or ArmState()
        self.state.add_image()
        self.ca = TestCA(directory)
        self._context = self.ca.server_context()
        self.tenant = TENANT
        self.client_id = "9f0c2e1a-5b7d-4e8f-a1b2-c3d4e5f60718"
        self.client_secret = secrets.token_urlsafe(24)
        self.federated_token = "eyJ.fake-federated-token." + secrets.token_urlsafe(12)
        self.tokens: set[str] = set()
        self.token_grants: list[str] = []
        self.scopes: list[str] = []
        self.violations: list[str] = []
        #: schema errors in the fake's own VM answers (a test bug, not the provider's)
        self.answer_violations: list[str] = []
        self.bodies: list[Json] = []
        self.log: list[tuple[str, str, int]] = []
        self.page_size = 50
        self._validator = schema.Validator(schema.load())
        self._lock = threading.Lock()
        self._servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    # -- listeners ---------------------------------------------------------------------------------------

    def serve(self, host: str = "127.0.0.1") -> str:
        server = _Server((host, 0), _handler(self))
        context = self._context
        if host != "127.0.0.1":
            context = self.ca.server_context(f"arm-{host}", (ipaddress.IPv4Address(host),))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-arm", daemon=True
        )
        thread.start()
        self._servers.append((server, thread))
        return f"https://{host}:{server.server_address[1]}"

    def close(self) -> None:
        for server, thread in self._servers:
            server.shutdown()
            server.server_close()
            thread.join()
        self._servers.clear()

    def client_context(self) -> ssl.SSLContext:
        return self.ca.client_context()

    def calls(self, name: str | None = None) -> int:
        with self._lock:
            return sum(1 for n, _, _ in self.log if name is None or n == name)

    def call_names(self) -> list[str]:
        with self._lock:
            return [n for n, _, _ in self.log]

    # -- dispatch ----------------------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Any, body: bytes) -> tuple[int, Any, dict[str, str]]:
        split = urllib.parse.urlsplit(target)
        path, query = split.path, dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
        base = f"https://{headers.get('Host', '127.0.0.1')}"
        if method == "POST" and path.endswith("/oauth2/v2.0/token"):
            return self._token(path, body)
        if method == "GET" and path.endswith("/.well-known/openid-configuration"):
            return self._openid(base, path)
        for route_method, pattern, name in ROUTES:
            match = pattern.match(path)
            if match and route_method == method:
                try:
                    self._authorize(headers)
                    if "api-version" not in query:
                        raise ArmError(
                            400, "MissingApiVersionParameter", "The api-version query parameter is required"
                        )
                    if match.group("sub") != self.state.subscription:
                        raise ArmError(
                            404,
                            "SubscriptionNotFound",
                            f"The subscription '{match['sub']}' could not be found.",
                        )
                    status, answer, extra = getattr(self, "_" + name.replace(".", "_"))(
                        match, query, body, base
                    )
                except ArmError as exc:
                    status, answer, extra = exc.status, exc.body(), {}
                self._record(name, path, status)
                return status, answer, extra
        self._record("unrouted", path, 404)
        return 404, {"error": {"code": "InvalidResourceType", "message": f"no route for {method} {path}"}}, {}

    def _record(self, name: str, path: str, status: int) -> None:
        with self._lock:
            self.log.append((name, path, status))

    # -- identity ----------------------------------------------------------------------------------------

    def _openid(self, base: str, path: str) -> tuple[int, Any, dict[str, str]]:
        tenant = path.strip("/").split("/")[0]
        return (
            200,
            {
                "token_endpoint": f"{base}/{tenant}/oauth2/v2.0/token",
                "issuer": f"{base}/{tenant}/v2.0",
                "authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/devicecode",
            },
            {},
        )

    def _token(self, path: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        form = dict(urllib.parse.parse_qsl(body.decode()))
        tenant = path.strip("/").split("/")[0]
        grant = form.get("grant_type", "")
        ok = tenant == self.tenant and form.get("client_id") == self.client_id
        if form.get("client_assertion"):
            kind = "workload-identity"
            ok = ok and form.get("client_assertion") == self.federated_token
        else:
            kind = "client-secret"
            ok = ok and form.get("client_secret") == self.client_secret
        ok = ok and grant == "client_credentials"
        with self._lock:
            self.token_grants.append(kind if ok else "refused")
            self.scopes.append(form.get("scope", ""))
        self._record("token", path, 200 if ok else 401)
        if not ok:
            return (
                401,
                {
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided.",
                    "error_codes": [7000215],
                },
                {},
            )
        if not form.get("scope", "").endswith("/.default"):
            return 400, {"error": "invalid_scope", "error_description": "AADSTS70011: invalid scope"}, {}
        token = secrets.token_urlsafe(32)
        with self._lock:
            self.tokens.add(token)
        return (
            200,
            {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token},
            {},
        )

    def _authorize(self, headers: Any) -> None:
        auth = str(headers.get("Authorization", ""))
        token = auth.removeprefix("Bearer ")
        with self._lock:
            known = auth.startswith("Bearer ") and token in self.tokens
        if not known:
            raise ArmError(
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing or invalid.",
            )

    # -- handlers ----------------------------------------------------------------------------------------

    def _delay(self) -> dict[str, str]:
        if self.state.retry_after_ms is not None:
            return {"retry-after-ms": str(self.state.retry_after_ms)}
        return {"Retry-After": self.state.retry_after}

    def _op_headers(self, base: str, op: Operation, delete: bool = False) -> dict[str, str]:
        url = (
            f"{base}/subscriptions/{self.state.subscription}/providers/Microsoft.Compute/locations/"
            f"{self.state.location}/operations/{op.id}?p=fake&api-version=2024-11-01"
        )
        headers = {"Azure-AsyncOperation": url, **self._delay()}
        if delete:
            headers["Location"] = url + "&monitor=true"
        return headers

    def _virtualMachines_createOrUpdate(
        self, m: re.Match[str], q: dict[str, str], body: bytes, base: str
    ) -> Any:
        try:
            parsed = json.loads(body or b"{}")
        except ValueError:
            raise ArmError(400, "InvalidRequestContent", "The request content was invalid JSON.") from None
        with self._lock:
            self.bodies.append(parsed)
        errors = self._validator.errors("VirtualMachine", parsed)
        if errors:
            with self._lock:
                self.violations.extend(errors)
            raise ArmError(400, "InvalidRequestContent", "; ".join(errors[:5]))
        status, vm, op = self.state.put_vm(m["name"], parsed)
        self._check_answer(vm)
        return status, vm, self._op_headers(base, op)

    def _check_answer(self, vm: Json) -> None:
        """The fake's own answers must fit the schema too (read-only fields allowed)."""
        errors = self._validator.errors("VirtualMachine", vm, response=True)
        if errors:
            with self._lock:
                self.answer_violations.extend(errors)

    def _virtualMachines_get(self, m: re.Match[str], q: dict[str, str], body: bytes, base: str) -> Any:
        vm = self.state.get_vm(m["name"])
        self._check_answer(vm)
        return 200, vm, {}

    def _virtualMachines_delete(self, m: re.Match[str], q: dict[str, str], body: bytes, base: str) -> Any:
        op = self.state.delete_vm(m["name"])
        if op is None:
            return 204, None, {}
        return 202, None, self._op_headers(base, op, delete=True)

    def _virtualMachines_list(self, m: re.Match[str], q: dict[str, str], body: bytes, base: str) -> Any:
        vms = sorted(self.state.list_vms(), key=lambda v: str(v["name"]))
        start = int(q.get("$skiptoken", "0") or 0)
        page: Json = {"value": vms[start : start + self.page_size]}
        if start + self.page_size < len(vms):
            page["nextLink"] = (
                f"{base}{self.state.group_id}/providers/Microsoft.Compute/virtualMachines"
                f"?api-version={q['api-version']}&$skiptoken={start + self.page_size}"
            )
        return 200, page, {}

    def _operations_get(self, m: re.Match[str], q: dict[str, str], body: bytes, base: str) -> Any:
        op = self.state.poll(m["op"])
        if q.get("monitor") == "true":
            if op.status == "InProgress":
                monitor = f"{base}{m.string}?p=fake&api-version=2024-11-01&monitor=true"
                return 202, None, {"Location": monitor, **self._delay()}
            return 200, None, {}
        answer: Json = {"startTime": op.started, "status": op.status, "name": op.id}
        if op.error:
            answer["error"] = op.error
        extra = {**self._delay()} if op.status == "InProgress" else {}
        return 200, answer, extra

    def _usage_list(self, m: re.Match[str], q: dict[str, str], body: bytes, base: str) -> Any:
        return 200, {"value": self.state.usages()}, {}

    def _resourceSkus_list(self, m: re.Match[str], q: dict[str, str], body: bytes, base: str) -> Any:
        wanted = re.fullmatch(r"location eq '([^']+)'", q.get("$filter", ""))
        skus = [s for s in self.state.skus if wanted is None or wanted[1] in s["locations"]]
        return 200, {"value": skus}, {}

    def _galleryImages_get(self, m: re.Match[str], q: dict[str, str], body: bytes, base: str) -> Any:
        path = urllib.parse.urlsplit(m.string).path
        found = self.state.images.get(path.lower())
        if found is None:
            raise ArmError(404, "ResourceNotFound", f"The Resource '{path}' was not found.")
        return 200, found, {}

    def _networkInterfaces_get(self, m: re.Match[str], q: dict[str, str], body: bytes, base: str) -> Any:
        nic = self.state.resource("networkInterfaces", m["name"])
        return 200, _public(nic, "Microsoft.Network/networkInterfaces", self.state.location), {}

    def _publicIPAddresses_get(self, m: re.Match[str], q: dict[str, str], body: bytes, base: str) -> Any:
        ip = self.state.resource("publicIPAddresses", m["name"])
        view = _public(ip, "Microsoft.Network/publicIPAddresses", self.state.location)
        view["properties"] = {"ipAddress": ip["ipAddress"], "publicIPAllocationMethod": "Static"}
        view["sku"] = {"name": "Standard", "tier": "Regional"}
        return 200, view, {}

    def _subnets_get(self, m: re.Match[str], q: dict[str, str], body: bytes, base: str) -> Any:
        subnet_id = urllib.parse.urlsplit(m.string).path
        if subnet_id.lower() != self.state.subnet_id.lower():
            raise ArmError(404, "NotFound", f"Resource {subnet_id} not found.")
        return (
            200,
            {
                "name": m["name"],
                "id": self.state.subnet_id,
                "type": "Microsoft.Network/virtualNetworks/subnets",
                "properties": {"addressPrefix": self.state.subnet_prefix, "provisioningState": "Succeeded"},
            },
            {},
        )

    def _networkSecurityGroups_get(self, m: re.Match[str], q: dict[str, str], body: bytes, base: str) -> Any:
        nsg_id = urllib.parse.urlsplit(m.string).path
        if nsg_id.lower() != self.state.nsg_id.lower():
            raise ArmError(404, "ResourceNotFound", f"Resource {nsg_id} not found.")
        return (
            200,
            {"name": m["name"], "id": self.state.nsg_id, "location": self.state.location, "properties": {}},
            {},
        )

    def _resourceGroups_get(self, m: re.Match[str], q: dict[str, str], body: bytes, base: str) -> Any:
        if m["group"].lower() != self.state.group.lower():
            raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{m['group']}' could not be found.")
        return (
            200,
            {
                "id": self.state.group_id,
                "name": self.state.group,
                "location": self.state.location,
                "properties": {"provisioningState": "Succeeded"},
            },
            {},
        )


def _public(resource: Json, kind: str, location: str) -> Json:
    """A resource as ARM shows it (the fake's bookkeeping fields left out)."""
    return {
        "name": resource["name"],
        "id": resource["id"],
        "type": kind,
        "location": location,
        "properties": dict(resource.get("properties") or {}),
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up (the fault proxy's dropped responses) are not errors


def _handler(fake: FakeArm) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length", "0") or 0)
            body = self.rfile.read(length) if length else b""
            status, answer, extra = fake.handle(self.command, self.path, self.headers, body)
            data = b"" if answer is None else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-ms-request-id", secrets.token_hex(8))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_DELETE = do_POST = do_PATCH = _serve

    return Handler
