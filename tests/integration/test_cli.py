"""The console script as users run it: exit codes, messages, plan, probe."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .daemon_proc import DaemonProcess

CLI = str(Path(sys.executable).parent / "cloud-api-adaptor")
NAME = "io.kubernetes.cri.sandbox-name=web"
NAMESPACE = "io.kubernetes.cri.sandbox-namespace=prod"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "HOME": "/root"}
    return subprocess.run(
        [CLI, *args], check=False, capture_output=True, text=True, env={**base, **(env or {})}, timeout=60
    )


def test_version_and_help_exit_zero() -> None:
    assert run("version").stdout.startswith("cloud-api-adaptor ")
    assert run("--help").returncode == 0
    serve_help = run("serve", "--help")
    assert serve_help.returncode == 0
    assert "REMOTE_HYPERVISOR_ENDPOINT" in serve_help.stdout


def test_an_unknown_provider_fails_listing_the_installed_ones() -> None:
    result = run("nosuchcloud")
    assert result.returncode != 0
    assert "Unsupported cloud provider: nosuchcloud" in result.stderr
    assert "local" in result.stderr and "fake" in result.stderr


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"TLS_MIN_VERSION": "VersionTLS10"}, "TLS_MIN_VERSION"),
        (
            {"TLS_MIN_VERSION": "VersionTLS13", "TLS_CIPHER_SUITES": "TLS_AES_128_GCM_SHA256"},
            "TLS_CIPHER_SUITES",
        ),
        ({"TLS_CIPHER_SUITES": "TLS_NOT_A_SUITE"}, "TLS_CIPHER_SUITES"),
        ({"PROXY_TIMEOUT": "soon"}, "PROXY_TIMEOUT"),
        ({"INITDATA": "!!!notbase64"}, "INITDATA"),
    ],
)
def test_bad_configuration_stops_start_up_naming_the_key(
    short_tmp: Path, env: dict[str, str], key: str
) -> None:
    d = DaemonProcess(short_tmp, env)
    result = subprocess.run(
        [CLI, "serve"], check=False, env=d.env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert key in result.stderr
    assert not d.socket.exists()


def test_plan_prints_the_decision_or_the_exact_error() -> None:
    ok = run(
        "plan",
        "--provider",
        "fake",
        "--annotation",
        NAME,
        "--annotation",
        NAMESPACE,
        "--annotation",
        "io.katacontainers.config.hypervisor.default_vcpus=2",
        "--annotation",
        "io.katacontainers.config.hypervisor.default_memory=3000",
    )
    assert ok.returncode == 0, ok.stderr
    decision = json.loads(ok.stdout)
    assert decision["instance_type"] == "fake.medium"
    assert decision["instance_name"].startswith("podvm-web-")
    assert decision["userdata_bytes"] > 0
    bad = run("plan", "--provider", "fake", "--annotation", NAME)
    assert bad.returncode == 1
    error = json.loads(bad.stdout)["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert error["field"] == "io.kubernetes.cri.sandbox-namespace"


def test_doctor_prints_a_table() -> None:
    result = run("doctor", "--provider", "fake")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configuration" in result.stdout and "ok" in result.stdout


def test_the_startup_probe_answers_once_the_socket_accepts(short_tmp: Path) -> None:
    d = DaemonProcess(short_tmp)
    d.start()
    try:
        url = f"http://127.0.0.1:{d.probe_port}"
        with urllib.request.urlopen(url + "/startup", timeout=5) as reply:
            assert reply.status == 200
        with urllib.request.urlopen(url + "/metrics", timeout=5) as reply:
            assert b"caa_sandboxes" in reply.read()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(url + "/nope", timeout=5)
    finally:
        assert d.stop() == 0
    assert not d.socket.exists()


@pytest.mark.parametrize("command", ["doctor", "plan"])
def test_a_fresh_nodes_state_directory_is_created_private_whichever_command_runs_first(
    command: str, short_tmp: Path
) -> None:
    state = short_tmp / "var" / "lib" / "caa"
    result = subprocess.run(
        ["sh", "-c", 'umask 022 && exec "$@"', "sh", CLI, command, "--provider", "local"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "STATE_DIR": str(state), "LOCAL_MODE": "loopback"},
    )
    assert result.returncode in (0, 1), result.stderr
    created = [p for p in (short_tmp / "var", short_tmp / "var" / "lib", state) if p.exists()]
    created += [p for p in state.rglob("*") if p.is_dir()] if state.exists() else []
    assert all(p.stat().st_mode & 0o777 == 0o700 for p in created), {
        str(p): oct(p.stat().st_mode & 0o777) for p in created
    }
    if command == "plan":
        assert created == []  # plan writes nothing at all
    else:
        assert state in created  # doctor prepared the provider's work directory under it
