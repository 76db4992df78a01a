"""The real ``process-user-data`` console script, end to end, in a directory root.

One run reads a cidata ``user-data`` file rendered by the worker-side code;
others fetch from a local EC2 IMDS stand-in (IMDSv2 token, IMDSv1 fallback)
found through a DMI ``sys_vendor`` file under the root.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cloud_api_adaptor import __version__
from cloud_api_adaptor.initdata import digest, encode_initdata
from cloud_api_adaptor.userdata import build_userdata

SCRIPT = Path(sys.executable).parent / "process-user-data"

INITDATA_TOML = (
    'algorithm = "sha384"\nversion = "0.1.0"\n\n[data]\n'
    '"aa.toml" = "[token_configs.kbs]\\nurl = \\"http://203.0.113.9:8080\\"\\n"\n'
    '"policy.rego" = "package agent_policy\\n"\n'
    '"not-allowed" = "x"\n'
)
APF_JSON = json.dumps(
    {"pod-network": {"podip": "10.244.1.5/24"}, "pod-name": "p", "pod-namespace": "ns"}, indent=4
)


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    command = [str(SCRIPT)] if SCRIPT.exists() else [shutil.which("process-user-data") or "process-user-data"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, check=False)


def files_under(root: Path) -> dict[str, bytes]:
    return {"/" + str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


class FakeImds:
    """EC2 IMDS on 127.0.0.1: ``v2`` hands out tokens and requires them; otherwise PUT is refused."""

    TOKEN = "AQAEAEXAMPLETOKEN=="

    def __init__(self, user_data: bytes, *, v2: bool, status: int = 200) -> None:
        self.requests: list[tuple[str, str, str | None]] = []
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                imds.requests.append(
                    ("PUT", self.path, self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"))
                )
                if not v2:
                    self._reply(403)
                elif self.path == "/latest/api/token" and self.headers.get(
                    "X-aws-ec2-metadata-token-ttl-seconds"
                ):
                    self._reply(200, imds.TOKEN.encode())
                else:
                    self._reply(400)

            def do_GET(self) -> None:
                token = self.headers.get("X-aws-ec2-metadata-token")
                imds.requests.append(("GET", self.path, token))
                if v2 and token != imds.TOKEN:
                    self._reply(401)
                elif self.path == "/latest/user-data":
                    self._reply(status, user_data if status == 200 else b"")
                else:
                    self._reply(404)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), name="fake-imds")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def user_data() -> str:
    return build_userdata(APF_JSON, encode_initdata(INITDATA_TOML), '{"auths":{}}', scratch_space=True)


def ec2_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    dmi = root / "sys/class/dmi/id"
    dmi.mkdir(parents=True)
    (dmi / "sys_vendor").write_text("Amazon EC2\n")
    return root


def check_provisioned(root: Path) -> None:
    files = files_under(root)
    expected_digest = digest(INITDATA_TOML.encode(), "sha384")
    assert files["/run/peerpod/apf.json"] == (APF_JSON + "\n").encode()
    assert files["/run/peerpod/auth.json"] == b'{"auths":{}}\n'
    assert files["/run/peerpod/scratch-space.marker"] == b""
    assert files["/run/peerpod/aa.toml"] == b'[token_configs.kbs]\nurl = "http://203.0.113.9:8080"\n'
    assert files["/run/peerpod/policy.rego"] == b"package agent_policy\n"
    assert files["/run/peerpod/initdata.digest"] == expected_digest.encode()
    assert "/run/peerpod/not-allowed" not in files


def test_provision_files_from_a_cidata_directory(tmp_path: Path, user_data: str) -> None:
    cidata = tmp_path / "cidata"
    cidata.mkdir()
    (cidata / "user-data").write_text(user_data)
    record = tmp_path / "pcr-args"
    tool = tmp_path / "fake-pcrextend"
    tool.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
    tool.chmod(0o755)
    root = tmp_path / "root"

    done = run("provision-files", "--root", str(root), "--cidata-dir", str(cidata), "--pcr-tool", str(tool))

    assert done.returncode == 0, done.stderr
    check_provisioned(root)
    assert record.read_text() == f"8:sha256={digest(INITDATA_TOML.encode(), 'sha384')[:64]}\n"
    assert "File: not-allowed is not allowed in initdata." in done.stderr


def test_the_default_cidata_dir_is_under_the_root_and_the_tpm_is_left_alone(
    tmp_path: Path, user_data: str
) -> None:
    root = tmp_path / "root"
    (root / "media/cidata").mkdir(parents=True)
    (root / "media/cidata/user-data").write_text(user_data)
    done = run("provision-files", "--root", str(root), "-t", "30s")
    assert done.returncode == 0, done.stderr
    check_provisioned(root)
    assert "tpm2_pcrextend" not in done.stderr


@pytest.mark.parametrize("v2", [True, False], ids=["imdsv2", "imdsv1-fallback"])
def test_provision_files_from_aws_imds(tmp_path: Path, user_data: str, v2: bool) -> None:
    imds = FakeImds(user_data.encode(), v2=v2)
    try:
        root = ec2_root(tmp_path)
        done = run("provision-files", "--root", str(root), "--aws-url", imds.url, "--retry-delay", "0")
    finally:
        imds.close()
    assert done.returncode == 0, done.stderr
    check_provisioned(root)
    put, get = imds.requests
    assert put == ("PUT", "/latest/api/token", "60")
    assert get == ("GET", "/latest/user-data", FakeImds.TOKEN if v2 else None)


def test_a_failed_fetch_exits_1_after_the_retries(tmp_path: Path) -> None:
    imds = FakeImds(b"", v2=True, status=500)
    try:
        root = ec2_root(tmp_path)
        done = run(
            "provision-files",
            "--root",
            str(root),
            "--aws-url",
            imds.url,
            "--retry-delay",
            "0",
            "--retry-attempts",
            "3",
        )
    finally:
        imds.close()
    assert done.returncode == 1
    assert "failed to retrieve cloud config: GET " in done.stderr
    assert "HTTP 500" in done.stderr
    assert [r[0] for r in imds.requests] == ["PUT", "GET"] * 3
    assert not (root / "run").exists()


def test_user_data_the_worker_could_not_have_sent_is_refused(tmp_path: Path) -> None:
    cidata = tmp_path / "cidata"
    cidata.mkdir()
    (cidata / "user-data").write_text(
        "#cloud-config\nwrite_files:\n  - path: /run/peerpod/apf.json\n    owner: root\n"
    )
    root = tmp_path / "root"
    done = run(
        "provision-files",
        "--root",
        str(root),
        "--cidata-dir",
        str(cidata),
        "--retry-delay",
        "0",
        "--retry-attempts",
        "2",
    )
    assert done.returncode == 1
    assert "failed to retrieve cloud config: write_files[0].owner: unknown key" in done.stderr


def test_base64_user_data_through_imds_is_not_decoded(tmp_path: Path, user_data: str) -> None:
    # AWS returns user data as stored; CAA stores the document itself (the SDK base64s it in transit).
    imds = FakeImds(base64.b64encode(user_data.encode()), v2=True)
    try:
        done = run(
            "provision-files",
            "--root",
            str(ec2_root(tmp_path)),
            "--aws-url",
            imds.url,
            "--retry-delay",
            "0",
            "--retry-attempts",
            "1",
        )
    finally:
        imds.close()
    assert done.returncode == 1
    assert "failed to retrieve cloud config" in done.stderr


def test_help_and_version() -> None:
    done = run("--help")
    assert done.returncode == 0 and "provision-files" in done.stdout
    done = run("provision-files", "--help")
    assert done.returncode == 0 and "--user-data-fetch-timeout" in done.stdout
    assert "--aws-url" not in done.stdout
    for spelling in (("version",), ("-v",), ("--version",)):  # the Go binary's spellings too
        done = run(*spelling)
        assert done.returncode == 0 and __version__ in done.stdout, spelling


def test_a_bad_timeout_is_a_usage_error() -> None:
    done = run("provision-files", "-t", "soon")
    assert done.returncode == 2
    assert "user-data-fetch-timeout" in done.stderr
