"""The webhook server over HTTPS with a cert-manager style certificate directory (no API server)."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import aiohttp
import pytest

from cloud_api_adaptor.options import load
from cloud_api_adaptor.testing.https import TestCA
from cloud_api_adaptor.webhook.server import MUTATE_PATH, WebhookServer
from cloud_api_adaptor.webhook.settings import WebhookSettings
from tests.webhook.cases import CASES
from tests.webhook.test_mutation import admission


def _cert_dir(ca: TestCA, directory: Path) -> Path:
    directory.mkdir()
    pair = ca.server_pair("localhost")
    (directory / "tls.crt").write_bytes(pair.cert_pem)
    (directory / "tls.key").write_bytes(pair.key_pem)
    return directory


@pytest.mark.asyncio
async def test_cert_manager_certificate_and_answers(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    env = {
        "WEBHOOK_BIND_ADDRESS": "127.0.0.1",
        "WEBHOOK_PORT": "0",
        "WEBHOOK_HEALTH_PORT": "0",
        "WEBHOOK_CERT_DIR": str(_cert_dir(ca, tmp_path / "certs")),
        "TLS_MIN_VERSION": "VersionTLS13",
    }
    server = WebhookServer(load(WebhookSettings, env), client=None)  # no API access needed
    await server.start()
    try:
        url = f"https://127.0.0.1:{server.port}{MUTATE_PATH}?timeout=10s"
        async with aiohttp.ClientSession() as session:
            context = ca.client_context()
            async with session.post(url, json=admission(CASES[0].pod()), ssl=context) as response:
                assert response.status == 200
                answer = json.loads(await response.text())
            assert answer["response"]["allowed"] is True
            assert answer["response"]["patchType"] == "JSONPatch"
            async with session.post(url, data=b"not json", ssl=context) as response:
                assert response.status == 400
            old = ssl.create_default_context(cafile=str(ca.ca_file))
            old.maximum_version = ssl.TLSVersion.TLSv1_2
            with pytest.raises(aiohttp.ClientError):
                async with session.post(url, json={}, ssl=old):
                    pass
            health = f"http://127.0.0.1:{server.health_port}"
            async with session.get(f"{health}/readyz") as response:
                assert response.status == 200
            async with session.get(f"{health}/metrics") as response:
                metrics = await response.text()
        assert 'caa_webhook_admissions_total{outcome="mutated"} 1.0' in metrics
        assert 'caa_webhook_admissions_total{outcome="rejected"} 1.0' in metrics
    finally:
        await server.close()


@pytest.mark.asyncio
async def test_own_certificate_needs_the_api(tmp_path: Path) -> None:
    env = {"WEBHOOK_CERT_DIR": str(tmp_path), "WEBHOOK_PORT": "0", "WEBHOOK_HEALTH_PORT": "-1"}
    server = WebhookServer(load(WebhookSettings, env), client=None)
    with pytest.raises(RuntimeError, match="Kubernetes API"):
        await server.start()
    await server.close()


def test_chain_fits_names_and_expiry() -> None:
    import datetime as dt

    from cloud_api_adaptor.webhook import certs

    hosts = certs.service_hosts("wh", "ns", ("127.0.0.1",))
    chain = certs.issue_chain(hosts)
    assert chain.pair.certificate.subject.rfc4514_string() == "CN=wh"
    assert certs.chain_fits(chain, hosts)
    assert not certs.chain_fits(chain, (*hosts, "10.0.0.1"))
    later = dt.datetime.now(dt.UTC) + certs.VALID_FOR - certs.RENEW_BEFORE + dt.timedelta(days=1)
    assert not certs.chain_fits(chain, hosts, now=later)


def test_the_webhook_command_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    """``cloud-api-adaptor webhook`` as a process: HTTPS with the mounted certificate; SIGTERM ends it."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    from cloud_api_adaptor.testing.eventually import eventually_sync

    ca = TestCA(tmp_path / "ca")
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    env = {
        "PATH": os.environ.get("PATH", ""),
        "WEBHOOK_BIND_ADDRESS": "127.0.0.1",
        "WEBHOOK_PORT": str(ports[0]),
        "WEBHOOK_HEALTH_PORT": str(ports[1]),
        "WEBHOOK_CERT_DIR": str(_cert_dir(ca, tmp_path / "certs")),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "cloud_api_adaptor", "webhook"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def answered() -> bytes | None:
            request = urllib.request.Request(
                f"https://localhost:{ports[0]}{MUTATE_PATH}",
                data=json.dumps(admission(CASES[1].pod())).encode(),
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, context=ca.client_context(), timeout=5) as response:
                    return bytes(response.read())
            except OSError:
                assert process.poll() is None, process.communicate()
                return None

        body = eventually_sync(answered, "the webhook to answer over HTTPS")
        assert body is not None
        assert json.loads(body)["response"]["patchType"] == "JSONPatch"
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err


def test_tls_profile_keys_follow_the_go_rules() -> None:
    from cloud_api_adaptor.errors import ConfigError

    with pytest.raises(ConfigError, match="TLS_MIN_VERSION"):
        load(WebhookSettings, {"TLS_MIN_VERSION": "VersionTLS10"})
    with pytest.raises(ConfigError, match="TLS_CIPHER_SUITES"):
        load(WebhookSettings, {"TLS_CIPHER_SUITES": "TLS_NOT_A_SUITE"})
    settings = load(WebhookSettings, {"TLS_CIPHER_SUITES": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"})
    assert settings.tls_profile().openssl_ciphers() == ["ECDHE-ECDSA-AES128-GCM-SHA256"]
