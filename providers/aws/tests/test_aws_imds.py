"""IMDSv2 reads against a local metadata server, and the provider filling unset settings from them."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aws_testkit import FAST_RETRY, FAST_WAIT
from caa_provider_aws.config import AwsConfig
from caa_provider_aws.ec2 import Ec2Port
from caa_provider_aws.imds import TOKEN_HEADER, TOKEN_TTL_HEADER, ImdsClient, ImdsFacts, fill_from_imds
from caa_provider_aws.provider import AwsProvider

TOKEN = "imds-session-token"
MAC = "0a:1b:2c:3d:4e:5f"
METADATA = {
    "/latest/meta-data/placement/region": "eu-central-1",
    "/latest/meta-data/mac": MAC,
    f"/latest/meta-data/network/interfaces/macs/{MAC}/subnet-id": "subnet-0worker",
    f"/latest/meta-data/network/interfaces/macs/{MAC}/security-group-ids": "sg-0a\nsg-0b",
    "/latest/meta-data/public-keys/": "0=worker-key",
}


class FakeImds:
    """A metadata server that, like IMDSv2, answers reads only with a session token."""

    def __init__(self) -> None:
        self.tokenless_reads = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                if self.path == "/latest/api/token" and self.headers.get(TOKEN_TTL_HEADER):
                    self._answer(200, TOKEN)
                else:
                    self._answer(400)

            def do_GET(self) -> None:
                if self.headers.get(TOKEN_HEADER) != TOKEN:
                    fake.tokenless_reads += 1
                    self._answer(401)
                elif self.path in METADATA:
                    self._answer(200, METADATA[self.path])
                else:
                    self._answer(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeImds:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def imds() -> Iterator[FakeImds]:
    with FakeImds() as server:
        yield server


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.asyncio
async def test_facts_are_read_with_an_imdsv2_session_token(imds: FakeImds) -> None:
    facts = await ImdsClient(imds.url).facts()
    assert facts == ImdsFacts("eu-central-1", "subnet-0worker", ("sg-0a", "sg-0b"), "worker-key")
    assert imds.tokenless_reads == 0


@pytest.mark.asyncio
async def test_no_metadata_service_means_not_on_ec2() -> None:
    assert await ImdsClient(_closed_port_url(), timeout=0.5).facts() is None


@pytest.mark.asyncio
async def test_only_unset_settings_are_filled(imds: FakeImds) -> None:
    config = AwsConfig(image_id="ami-1", subnet_id="subnet-explicit")
    filled = await fill_from_imds(config, ImdsClient(imds.url))
    assert (filled.region, filled.subnet_id, filled.security_group_ids, filled.key_name) == (
        "eu-central-1",
        "subnet-explicit",
        ("sg-0a", "sg-0b"),
        "worker-key",
    )


@pytest.mark.asyncio
async def test_the_provider_fills_its_config_from_metadata_before_building_the_ec2_client(
    imds: FakeImds,
) -> None:
    seen: list[AwsConfig] = []

    class NoEc2:
        async def aclose(self) -> None:
            pass

    def factory(config: AwsConfig) -> Ec2Port:
        seen.append(config)
        return NoEc2()  # type: ignore[return-value]

    provider = AwsProvider(
        AwsConfig(image_id="ami-1"),
        ec2_factory=factory,
        imds=ImdsClient(imds.url),
        retry=FAST_RETRY,
        wait=FAST_WAIT,
    )
    await provider._port()
    await provider._port()
    await provider.aclose()
    assert [c.region for c in seen] == ["eu-central-1"]
    assert provider.config.key_name == "worker-key"
