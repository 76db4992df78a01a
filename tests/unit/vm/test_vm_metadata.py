"""Metadata sources against a local HTTP server speaking each cloud's protocol, and detection."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cloud_api_adaptor.vm.metadata import (
    HV_KVM,
    HV_MICROSOFT,
    AlibabaSource,
    AwsSource,
    AzureSource,
    Endpoints,
    FileSource,
    GcpSource,
    MetadataError,
    Platform,
    detect_source,
    read_platform,
)

USER_DATA = b"#cloud-config\n\nwrite_files:\n  - path: /run/peerpod/apf.json\n    content: |\n      {}\n"
AZURE_PATH = "/metadata/instance/compute/userData?api-version=2021-01-01&format=text"


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    #: headers the request must carry (else ``reject``), as real metadata services insist
    require: Mapping[str, str] = field(default_factory=dict)
    reject: int = 400
    #: hold the request until the server closes (a service that never answers)
    hang: bool = False


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class FakeMetadataServer:
    """A scripted HTTP server on 127.0.0.1; unknown paths get 404."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.seen: list[Seen] = []
        self._release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                fake.seen.append(Seen(self.command, self.path, headers))
                route = fake.routes.get((self.command, self.path))
                if route is None:
                    status, body = 404, b"not found"
                elif any(headers.get(k.lower()) != v for k, v in route.require.items()):
                    status, body = route.reject, b"missing or wrong header"
                else:
                    if route.hang:
                        fake._release.wait()
                    status, body = route.status, route.body
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (timeout test)

            do_GET = do_PUT = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), name="fake-imds")

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def route(self, method: str, path: str, **kwargs: Any) -> None:
        self.routes[(method, path)] = Route(**kwargs)

    def paths(self) -> list[tuple[str, str]]:
        return [(s.method, s.path) for s in self.seen]

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()  # joins the handler threads
        self._thread.join()


@pytest.fixture
def server() -> Iterator[FakeMetadataServer]:
    fake = FakeMetadataServer()
    fake.start()
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def closed_url() -> str:
    """A loopback URL nothing listens on."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = srv.server_address[1]
    srv.server_close()
    return f"http://127.0.0.1:{port}"


# --- Azure ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_azure_fetches_user_data_with_the_metadata_header_and_decodes_base64(
    server: FakeMetadataServer,
) -> None:
    server.route("GET", AZURE_PATH, body=base64.b64encode(USER_DATA), require={"Metadata": "true"})
    assert await AzureSource(server.url).fetch() == USER_DATA
    assert server.paths() == [("GET", AZURE_PATH)]


@pytest.mark.asyncio
async def test_azure_refuses_an_answer_that_is_not_base64(server: FakeMetadataServer) -> None:
    server.route("GET", AZURE_PATH, body=b"#cloud-config\n")
    with pytest.raises(MetadataError, match="not valid base64"):
        await AzureSource(server.url).fetch()


# --- AWS -----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_aws_uses_an_imdsv2_token_when_the_service_hands_one_out(server: FakeMetadataServer) -> None:
    server.route(
        "PUT", "/latest/api/token", body=b"tok-123", require={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    )
    server.route(
        "GET",
        "/latest/user-data",
        body=USER_DATA,
        require={"X-aws-ec2-metadata-token": "tok-123"},
        reject=401,
    )
    assert await AwsSource(server.url).fetch() == USER_DATA
    assert server.paths() == [("PUT", "/latest/api/token"), ("GET", "/latest/user-data")]
    assert server.seen[1].headers["x-aws-ec2-metadata-token"] == "tok-123"


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [403, 404, 405])
async def test_aws_falls_back_to_imdsv1_when_the_token_request_fails(
    server: FakeMetadataServer, status: int
) -> None:
    server.route("PUT", "/latest/api/token", status=status)
    server.route("GET", "/latest/user-data", body=USER_DATA)
    assert await AwsSource(server.url).fetch() == USER_DATA
    assert server.paths() == [("PUT", "/latest/api/token"), ("GET", "/latest/user-data")]
    assert "x-aws-ec2-metadata-token" not in server.seen[1].headers


@pytest.mark.asyncio
async def test_aws_falls_back_to_imdsv1_when_the_token_request_times_out(server: FakeMetadataServer) -> None:
    server.route("PUT", "/latest/api/token", body=b"too-late", hang=True)
    server.route("GET", "/latest/user-data", body=USER_DATA)
    assert await AwsSource(server.url, token_timeout=0.2).fetch() == USER_DATA
    assert "x-aws-ec2-metadata-token" not in server.seen[-1].headers


@pytest.mark.asyncio
async def test_aws_user_data_is_returned_raw(server: FakeMetadataServer) -> None:
    raw = base64.b64encode(USER_DATA)  # not decoded: AWS hands back what was stored
    server.route("PUT", "/latest/api/token", body=b"t")
    server.route("GET", "/latest/user-data", body=raw)
    assert await AwsSource(server.url).fetch() == raw


@pytest.mark.asyncio
async def test_a_non_200_answer_is_an_error(server: FakeMetadataServer) -> None:
    server.route("PUT", "/latest/api/token", body=b"t")
    server.route("GET", "/latest/user-data", status=500, body=b"oops")
    with pytest.raises(MetadataError, match="HTTP 500"):
        await AwsSource(server.url).fetch()
    server.route("GET", "/latest/user-data", status=204)
    with pytest.raises(MetadataError, match="HTTP 204"):
        await AwsSource(server.url).fetch()


@pytest.mark.asyncio
async def test_an_unreachable_service_is_an_error(closed_url: str) -> None:
    with pytest.raises(MetadataError, match="user-data"):
        await AwsSource(closed_url).fetch()


# --- GCP and Alibaba -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_gcp_probes_then_fetches_the_base64_attribute(server: FakeMetadataServer) -> None:
    flavor = {"Metadata-Flavor": "Google"}
    server.route("GET", "/computeMetadata/v1/instance", body=b"{}", require=flavor, reject=403)
    server.route(
        "GET",
        "/computeMetadata/v1/instance/attributes/user-data",
        body=base64.b64encode(USER_DATA),
        require=flavor,
        reject=403,
    )
    gcp = GcpSource(server.url)
    assert await gcp.probe()
    assert await gcp.fetch() == USER_DATA
    assert server.paths() == [
        ("GET", "/computeMetadata/v1/instance"),
        ("GET", "/computeMetadata/v1/instance/attributes/user-data"),
    ]


@pytest.mark.asyncio
async def test_gcp_probe_fails_without_a_metadata_server(server: FakeMetadataServer, closed_url: str) -> None:
    assert not await GcpSource(closed_url).probe()
    assert not await GcpSource(server.url).probe()  # answers 404


@pytest.mark.asyncio
async def test_alibaba_fetches_raw_user_data(server: FakeMetadataServer) -> None:
    server.route("GET", "/latest/user-data", body=USER_DATA)
    assert await AlibabaSource(server.url).fetch() == USER_DATA


# --- the cidata file -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_file_source_reads_the_cidata_user_data(tmp_path: Path) -> None:
    (tmp_path / "user-data").write_bytes(USER_DATA)
    assert await FileSource(tmp_path / "user-data").fetch() == USER_DATA
    with pytest.raises(MetadataError):
        await FileSource(tmp_path / "missing").fetch()


# --- detection -----------------------------------------------------------------------------------


def _gcp_routes(server: FakeMetadataServer) -> None:
    server.route("GET", "/computeMetadata/v1/instance", body=b"{}", require={"Metadata-Flavor": "Google"})


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("platform", "gcp_answers", "expected"),
    [
        (Platform(sys_vendor="Amazon EC2", hypervisor_vendor=HV_MICROSOFT), True, "azure"),
        (Platform(sys_vendor="Amazon EC2", hypervisor_vendor=HV_KVM), True, "aws"),
        (Platform(sys_vendor="Google", hypervisor_vendor=HV_KVM), True, "gcp"),
        (Platform(sys_vendor="Google", hypervisor_vendor=""), True, "gcp"),
        (Platform(sys_vendor="", hypervisor_vendor=HV_KVM), False, None),
        (Platform(sys_vendor="Alibaba Cloud", hypervisor_vendor=HV_KVM), True, "gcp"),
        (Platform(sys_vendor="Alibaba Cloud", hypervisor_vendor=HV_KVM), False, "alibaba"),
        (Platform(sys_vendor="IBM", hypervisor_vendor=""), True, None),
    ],
)
async def test_detection_follows_the_go_order(
    server: FakeMetadataServer, platform: Platform, gcp_answers: bool, expected: str | None
) -> None:
    if gcp_answers:
        _gcp_routes(server)
    source = await detect_source(platform, Endpoints(gcp=server.url))
    assert (source.name if source else None) == expected


@pytest.mark.asyncio
async def test_the_cidata_file_wins_over_any_cloud(tmp_path: Path) -> None:
    platform = Platform(sys_vendor="Amazon EC2", hypervisor_vendor=HV_MICROSOFT, cidata_user_data=tmp_path)
    source = await detect_source(platform, Endpoints())
    assert source is not None and source.name == "file"


@pytest.mark.asyncio
async def test_only_kvm_or_google_platforms_probe_gcp(server: FakeMetadataServer) -> None:
    _gcp_routes(server)
    assert await detect_source(Platform(sys_vendor="Alibaba Cloud"), Endpoints(gcp=server.url)) is not None
    assert server.seen == []


def _tree(root: Path, files: Mapping[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_read_platform_reads_dmi_and_hypervisor_hints_under_root(tmp_path: Path) -> None:
    azure = tmp_path / "azure"
    _tree(azure, {"sys/class/dmi/id/sys_vendor": "Microsoft Corporation\n"})
    (azure / "sys/bus/vmbus").mkdir(parents=True)
    assert read_platform(azure, azure / "media/cidata") == Platform(
        "Microsoft Corporation", HV_MICROSOFT, None
    )

    aws = tmp_path / "aws"
    _tree(
        aws,
        {
            "sys/class/dmi/id/sys_vendor": "Amazon EC2\n",
            "sys/devices/system/clocksource/clocksource0/available_clocksource": "kvm-clock tsc acpi_pm \n",
        },
    )
    assert read_platform(aws, aws / "media/cidata") == Platform("Amazon EC2", HV_KVM, None)

    bare = tmp_path / "bare"
    _tree(bare, {"media/cidata/user-data": "#cloud-config\n"})
    assert read_platform(bare, bare / "media/cidata") == Platform("", "", bare / "media/cidata/user-data")
