"""The fake's HTTP face: Compute Engine v1 REST paths, the OAuth token endpoint, Resource Manager tags.

Every request must carry a bearer token google-auth made with a test service
account (a self-signed JWT, or an access token from ``/token``); every JSON body
is checked against the discovery document, and what fails is both refused (400)
and recorded in ``violations`` for the suite to assert on.  Served by a stdlib
``ThreadingHTTPServer`` on loopback (or on a test stand's address).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import discovery
from .auth import Accounts, AuthError, ServiceAccount, new_service_account
from .errors import ApiError
from .state import FakeCompute, Json

COMPUTE_AUDIENCES = ("https://compute.googleapis.com/", "https://compute.googleapis.com")
RM_AUDIENCES = ("https://cloudresourcemanager.googleapis.com/",)

Route = tuple[str, re.Pattern[str], str, str, str]  # method, path, handler, discovery resource, method name
_P = r"/compute/v1/projects/(?P<project>[^/]+)"
_Z = _P + r"/zones/(?P<zone>[^/]+)"
ROUTES: list[Route] = [
    ("POST", re.compile(_Z + r"/instances"), "insert", "instances", "insert"),
    ("GET", re.compile(_Z + r"/instances"), "list", "instances", "list"),
    ("GET", re.compile(_Z + r"/instances/(?P<name>[^/]+)"), "get_instance", "instances", "get"),
    ("DELETE", re.compile(_Z + r"/instances/(?P<name>[^/]+)"), "delete", "instances", "delete"),
    ("GET", re.compile(_Z + r"/operations/(?P<op>[^/]+)"), "get_operation", "zoneOperations", "get"),
    ("POST", re.compile(_Z + r"/operations/(?P<op>[^/]+)/wait"), "wait_operation", "zoneOperations", "wait"),
    ("GET", re.compile(_Z + r"/machineTypes/(?P<name>[^/]+)"), "machine_type", "machineTypes", "get"),
    ("GET", re.compile(_Z), "zone", "zones", "get"),
    (
        "GET",
        re.compile(_P + r"/global/images/family/(?P<name>[^/]+)"),
        "image_family",
        "images",
        "getFromFamily",
    ),
    ("GET", re.compile(_P + r"/global/images/(?P<name>[^/]+)"), "image", "images", "get"),
    ("GET", re.compile(_P + r"/global/networks/(?P<name>[^/]+)"), "network", "networks", "get"),
    (
        "GET",
        re.compile(_P + r"/regions/(?P<region>[^/]+)/subnetworks/(?P<name>[^/]+)"),
        "subnetwork",
        "subnetworks",
        "get",
    ),
    ("GET", re.compile(_P + r"/regions/(?P<region>[^/]+)"), "region", "regions", "get"),
    ("GET", re.compile(_P), "project", "projects", "get"),
]


class FakeGcp:
    """State, accounts and request log behind any number of HTTP listeners."""

    def __init__(self, compute: FakeCompute | None = None) -> None:
        self.compute = compute or FakeCompute()
        self.accounts = Accounts()
        self.account: ServiceAccount = new_service_account(self.compute.project)
        self.accounts.add(self.account)
        self.violations: list[str] = []
        self.log: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    # -- listeners ---------------------------------------------------------------------------------------

    def serve(self, host: str = "127.0.0.1") -> str:
        """Start a listener on ``host`` (port from the kernel); its base URL."""
        server = _Server((host, 0), _handler(self))
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-gcp", daemon=True
        )
        thread.start()
        self._servers.append((server, thread))
        return f"http://{host}:{server.server_address[1]}"

    def close(self) -> None:
        for server, thread in self._servers:
            server.shutdown()
            server.server_close()
            thread.join()
        self._servers.clear()

    def key_json(self, base_url: str) -> str:
        """The test service account's key file, its token_uri on this fake."""
        return self.account.key_json(self.compute.project, f"{base_url}/token")

    def calls(self, method: str | None = None) -> int:
        with self._lock:
            return sum(1 for m, _, _ in self.log if method is None or m == method)

    # -- dispatch ----------------------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Any, body: bytes) -> tuple[int, Json]:
        split = urllib.parse.urlsplit(target)
        path, query = split.path, dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
        status, answer = self._dispatch(method, path, query, headers, body)
        return status, answer

    def _record(self, name: str, path: str, status: int) -> None:
        with self._lock:
            self.log.append((name, path, status))

    def _violation(self, text: str) -> None:
        with self._lock:
            self.violations.append(text)

    def _dispatch(
        self, method: str, path: str, query: dict[str, str], headers: Any, body: bytes
    ) -> tuple[int, Json]:
        if method == "POST" and path == "/token":
            return self._token(body, f"http://{headers.get('Host', '')}/token")
        audiences = RM_AUDIENCES if path.startswith("/v3/") else COMPUTE_AUDIENCES
        try:
            self.accounts.check_bearer(headers.get("Authorization", ""), audiences)
        except AuthError as exc:
            self._record("unauthenticated", path, 401)
            return 401, {
                "error": {
                    "code": 401,
                    "status": "UNAUTHENTICATED",
                    "message": f"Request had invalid authentication credentials: {exc}",
                }
            }
        if path.startswith("/v3/"):
            return self._resource_manager(method, path, query, body)
        for verb, pattern, handler, resource, name in ROUTES:
            found = pattern.fullmatch(path)
            if verb != method or found is None:
                continue
            problems = discovery.validate_parameters(resource, name, query)
            payload: Json = {}
            if body:
                payload = json.loads(body)
                schema = discovery.method(resource, name).get("request", {}).get("$ref", "")
                if schema:
                    problems += discovery.validate_body(f"compute.{resource}.{name}", schema, payload)
            if problems:
                for p in problems:
                    self._violation(f"{method} {path}: {p}")
                self._record(f"{resource}.{name}", path, 400)
                return 400, ApiError(400, "invalid", "; ".join(problems)).body()
            try:
                answer = getattr(self, "_" + handler)(found.groupdict(), query, payload)
            except ApiError as exc:
                self._record(f"{resource}.{name}", path, exc.status)
                return exc.status, exc.body()
            self._record(f"{resource}.{name}", path, 200)
            return 200, answer
        self._record("unknown", path, 404)
        return 404, ApiError(404, "notFound", f"no such method {method} {path}").body()

    def _token(self, body: bytes, token_uri: str) -> tuple[int, Json]:
        form = dict(urllib.parse.parse_qsl(body.decode()))
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return 400, {"error": "unsupported_grant_type"}
        try:
            answer = self.accounts.issue(form.get("assertion", ""), token_uri)
        except AuthError as exc:
            self._record("token", "/token", 400)
            return 400, {"error": "invalid_grant", "error_description": str(exc)}
        self._record("token", "/token", 200)
        return 200, answer

    # -- compute handlers --------------------------------------------------------------------------------

    def _where(self, params: dict[str, str]) -> None:
        c = self.compute
        if params.get("project") != c.project or params.get("zone", c.zone) != c.zone:
            raise ApiError(
                404,
                "notFound",
                f"The resource 'projects/{params.get('project')}/zones/{params.get('zone')}' was not found",
            )

    def _insert(self, params: dict[str, str], query: dict[str, str], payload: Json) -> Json:
        self._where(params)
        return self.compute.insert(payload, query.get("requestId", ""))

    def _list(self, params: dict[str, str], query: dict[str, str], payload: Json) -> Json:
        self._where(params)
        return self.compute.list_instances(
            query.get("filter", ""), query.get("pageToken", ""), int(query.get("maxResults") or 0)
        )

    def _get_instance(self, params: dict[str, str], query: dict[str, str], payload: Json) -> Json:
        self._where(params)
        return self.compute.get_instance(params["name"])

    def _delete(self, params: dict[str, str], query: dict[str, str], payload: Json) -> Json:
        self._where(params)
        return self.compute.delete(params["name"], query.get("requestId", ""))

    def _get_operation(self, params: dict[str, str], query: dict[str, str], payload: Json) -> Json:
        self._where(params)
        return self.compute.get_operation(params["op"])

    def _wait_operation(self, params: dict[str, str], query: dict[str, str], payload: Json) -> Json:
        self._where(params)
        return self.compute.wait_operation(params["op"])

    def _machine_type(self, params: dict[str, str], query: dict[str, str], payload: Json) -> Json:
        self._where(params)
        found = self.compute.machine_types.get(params["name"])
        if found is None:
            raise ApiError(
                404,
                "notFound",
                f"The resource 'projects/{params['project']}/zones/{params['zone']}"
                f"/machineTypes/{params['name']}' was not found",
            )
        return {**found, "zone": params["zone"]}

    def _zone(self, params: dict[str, str], query: dict[str, str], payload: Json) -> Json:
        self._where(params)
        return {
            "kind": "compute#zone",
            "name": self.compute.zone,
            "status": "UP",
            "region": self.compute.region,
        }

    def _image(self, params: dict[str, str], query: dict[str, str], payload: Json) -> Json:
        return self.compute._image(f"projects/{params['project']}/global/images/{params['name']}")

    def _image_family(self, params: dict[str, str], query: dict[str, str], payload: Json) -> Json:
        return self.compute._image(f"projects/{params['project']}/global/images/family/{params['name']}")

    def _network(self, params: dict[str, str], query: dict[str, str], payload: Json) -> Json:
        found = self.compute.networks.get(params["name"])
        if found is None or params["project"] != self.compute.project:
            raise ApiError(
                404,
                "notFound",
                f"The resource 'projects/{params['project']}/global/networks/{params['name']}' was not found",
            )
        return found

    def _subnetwork(self, params: dict[str, str], query: dict[str, str], payload: Json) -> Json:
        found = self.compute.subnetworks.get(params["name"])
        if found is None or params["region"] != self.compute.region:
            raise ApiError(
                404,
                "notFound",
                f"The resource 'projects/{params['project']}/regions/{params['region']}"
                f"/subnetworks/{params['name']}' was not found",
            )
        return found

    def _region(self, params: dict[str, str], query: dict[str, str], payload: Json) -> Json:
        if params["region"] != self.compute.region:
            raise ApiError(
                404,
                "notFound",
                f"The resource 'projects/{params['project']}/regions/{params['region']}' was not found",
            )
        with self.compute.lock:
            quotas = [dict(q) for q in self.compute.quotas.values()]
        return {"kind": "compute#region", "name": self.compute.region, "status": "UP", "quotas": quotas}

    def _project(self, params: dict[str, str], query: dict[str, str], payload: Json) -> Json:
        if params["project"] != self.compute.project:
            raise ApiError(
                403,
                "forbidden",
                f"Required 'compute.projects.get' permission for 'projects/{params['project']}'",
            )
        return {"kind": "compute#project", "name": self.compute.project, "id": "123456789012"}

    # -- resource manager --------------------------------------------------------------------------------

    def _resource_manager(
        self, method: str, path: str, query: dict[str, str], body: bytes
    ) -> tuple[int, Json]:
        c = self.compute
        with c.lock:
            if method == "GET" and path == "/v3/tagKeys":
                keys = [k for k in c.tag_keys.values() if k["parent"] == query.get("parent")]
                self._record("tagKeys.list", path, 200)
                return 200, {"tagKeys": keys}
            if method == "GET" and path == "/v3/tagValues":
                values = [v for v in c.tag_values.values() if v["parent"] == query.get("parent")]
                self._record("tagValues.list", path, 200)
                return 200, {"tagValues": values}
            if method == "POST" and path == "/v3/tagBindings":
                binding = json.loads(body)
                instance_id = str(binding.get("parent", "")).rsplit("/", 1)[-1]
                if not any(i["id"] == instance_id for i in c.instances.values()):
                    self._record("tagBindings.create", path, 404)
                    return 404, ApiError(
                        404, "notFound", f"resource {binding.get('parent')} not found"
                    ).body()
                if binding.get("tagValue") not in c.tag_values:
                    self._record("tagBindings.create", path, 400)
                    return 400, ApiError(
                        400, "invalid", f"tag value {binding.get('tagValue')} not found"
                    ).body()
                if any(
                    b["parent"] == binding["parent"] and b["tagValue"] == binding["tagValue"]
                    for b in c.tag_bindings
                ):
                    self._record("tagBindings.create", path, 409)
                    return 409, ApiError(409, "alreadyExists", "A binding already exists").body()
                made = {
                    **binding,
                    "name": "tagBindings/"
                    + f"{urllib.parse.quote(binding['parent'], safe='')}/{binding['tagValue']}",
                }
                c.tag_bindings.append(made)
                self._record("tagBindings.create", path, 200)
                return 200, {
                    "name": f"operations/rctb.{secrets.token_hex(8)}",
                    "done": True,
                    "response": {
                        "@type": "type.googleapis.com/google.cloud.resourcemanager.v3.TagBinding",
                        **made,
                    },
                }
        self._record("unknown", path, 404)
        return 404, ApiError(404, "notFound", f"no such method {method} {path}").body()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a burst of pod creates must not overflow the listen backlog

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-reply (a dropped response) is expected


def _handler(fake: FakeGcp) -> Callable[..., BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, answer = fake.handle(self.command, self.path, self.headers, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PATCH = _any

    return Handler
