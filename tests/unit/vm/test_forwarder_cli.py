"""agent-protocol-forwarder CLI: Go-style flags, config errors, systemd readiness, graceful SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cloud_api_adaptor.aio import loop_factory
from cloud_api_adaptor.apf import ApfConfig
from cloud_api_adaptor.errors import ConfigError
from cloud_api_adaptor.vm.forwarder import parse_listen, sd_notify
from cloud_api_adaptor.vm.forwarder_cli import build_parser, main, settings_from_args


def settings(*argv: str):  # type: ignore[no-untyped-def]
    return settings_from_args(build_parser().parse_args(list(argv)), environ={})


def test_defaults_match_the_go_binary() -> None:
    s = settings()
    assert str(s.config_path) == "/run/peerpod/apf.json"
    assert s.listen == "0.0.0.0:15150"
    assert str(s.kata_agent_socket) == "/run/kata-containers/agent.sock"
    assert s.pod_namespace == "/run/netns/podns"
    assert (s.disable_tls, s.skip_verify, s.host_interface) == (False, False, "")


def test_single_dash_double_dash_and_equals_forms_are_accepted() -> None:
    s = settings(
        "-pod-namespace",
        "/run/netns/x",
        "--kata-agent-socket=/tmp/a.sock",
        "-listen=127.0.0.1:1",
        "-disable-tls",
        "-tls-skip-verify=false",
        "-cert-file",
        "/c",
        "-cert-key",
        "/k",
        "-ca-cert-file",
        "/ca",
        "-tls-cipher-suites",
        "A, B,",
    )
    assert s.pod_namespace == "/run/netns/x"
    assert str(s.kata_agent_socket) == "/tmp/a.sock"
    assert s.listen == "127.0.0.1:1"
    assert s.disable_tls is True
    assert s.skip_verify is False
    assert (s.cert_file, s.cert_key, s.ca_cert_file) == ("/c", "/k", "/ca")
    assert s.tls_cipher_suites == ("A", "B")


def test_notify_socket_comes_from_the_environment() -> None:
    args = build_parser().parse_args([])
    assert settings_from_args(args, environ={"NOTIFY_SOCKET": "/run/systemd/notify"}).notify_socket == (
        "/run/systemd/notify"
    )


def test_event_loop_comes_from_the_environment() -> None:
    args = build_parser().parse_args([])
    assert settings_from_args(args, environ={}).event_loop == ""
    assert settings_from_args(args, environ={"CAA_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"


def test_loop_factory_prefers_uvloop_and_can_be_turned_off() -> None:
    uvloop = pytest.importorskip("uvloop")
    assert loop_factory("") is uvloop.new_event_loop
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory(" UVLOOP ") is uvloop.new_event_loop
    assert loop_factory("asyncio") is None
    with pytest.raises(ConfigError) as err:
        loop_factory("trio")
    assert err.value.key == "CAA_EVENT_LOOP"


def test_unknown_event_loop_exits_1_naming_the_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "apf.json"
    path.write_text(ApfConfig(pod_namespace="ns", pod_name="p").to_json())
    monkeypatch.setenv("CAA_EVENT_LOOP", "trio")
    assert main(["-config", str(path), "-listen", "127.0.0.1:0", "-disable-tls"]) == 1
    assert "unknown event loop 'trio'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("addr", "expected"),
    [("0.0.0.0:15150", ("0.0.0.0", 15150)), (":15150", ("0.0.0.0", 15150)), ("[::1]:5", ("::1", 5))],
)
def test_listen_addresses(addr: str, expected: tuple[str, int]) -> None:
    assert parse_listen(addr) == expected


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-version"]) == 0
    assert capsys.readouterr().out.startswith("agent-protocol-forwarder version ")


def test_missing_config_exits_1_with_the_go_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["-config", str(tmp_path / "missing.json")]) == 1
    assert f"failed to open {tmp_path / 'missing.json'}" in capsys.readouterr().err


def test_invalid_config_exits_1_with_the_go_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "apf.json"
    path.write_text('{"pod-name": 12}')
    assert main(["-config", str(path)]) == 1
    assert f"failed to decode a Agent Protocol Forwarder config file {path}" in capsys.readouterr().err


def test_tls_without_a_server_certificate_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "apf.json"
    path.write_text(ApfConfig(pod_name="p").to_json())
    assert main(["-config", str(path), "-listen", "127.0.0.1:0"]) == 1
    assert "no server certificate" in capsys.readouterr().err


def test_sd_notify_sends_a_datagram(short_tmp: Path) -> None:
    path = short_tmp / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        assert sd_notify("READY=1", str(path)) is True
        assert sock.recv(64) == b"READY=1"
    assert sd_notify("READY=1", "") is False


@pytest.mark.parametrize(("choice", "loop"), [("", "uvloop"), ("asyncio", "asyncio")])
def test_process_notifies_systemd_and_stops_gracefully_on_sigterm(
    short_tmp: Path, choice: str, loop: str
) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    apf = short_tmp / "apf.json"
    apf.write_text(ApfConfig(pod_namespace="ns", pod_name="p").to_json())
    notify = short_tmp / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        sock.settimeout(60)  # a bound on a hang, not a timing assertion
        env = {**os.environ, "NOTIFY_SOCKET": str(notify), "CAA_EVENT_LOOP": choice}
        cmd = [sys.executable, "-m", "cloud_api_adaptor.vm.forwarder_cli", "-config", str(apf)]
        cmd += ["-listen", "127.0.0.1:0", "-disable-tls", "-kata-agent-socket", str(short_tmp / "agent.sock")]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert sock.recv(64) == b"READY=1"
            proc.send_signal(signal.SIGTERM)
            assert sock.recv(64) == b"STOPPING=1"
            assert proc.wait(timeout=60) == 0
            assert f"event loop: {loop}" in proc.stderr.read().decode()  # type: ignore[union-attr]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]


def test_resume_window_is_a_go_duration_and_zero_turns_it_off(capsys: pytest.CaptureFixture[str]) -> None:
    assert settings_from_args(build_parser().parse_args([])).resume_window == 600.0
    assert settings_from_args(build_parser().parse_args(["-resume-window", "90s"])).resume_window == 90.0
    assert settings_from_args(build_parser().parse_args(["-resume-window=0"])).resume_window == 0.0
    assert main(["-resume-window", "soon"]) == 1
    assert "resume-window" in capsys.readouterr().err
