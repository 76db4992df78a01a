"""Runs ``cloud-api-adaptor serve`` as a real subprocess for tests (kill -9 included)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

BIN = Path(sys.executable).parent / "cloud-api-adaptor"
SERVING_MARKER = "cloud-api-adaptor serving on"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DaemonProcess:
    def __init__(
        self,
        root: Path,
        extra_env: Mapping[str, str] | None = None,
        provider: str = "local",
        wrapper: Sequence[str] = (),
        args: Sequence[str] = (),
    ) -> None:
        """``wrapper`` prefixes the command (e.g. ``ip netns exec NS``; it must exec in place);
        ``args`` follow ``serve`` (flags without an environment variable, e.g. ``-disable-tls``)."""
        self.root = root
        self.wrapper = tuple(wrapper)
        self.args = tuple(args)
        self.socket = root / "hv.sock"
        self.pods_dir = root / "pods"
        self.state_dir = root / "state"
        self.probe_port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("CLOUD_", "LOCAL_", "AWS_"))},
            "CLOUD_PROVIDER": provider,
            "REMOTE_HYPERVISOR_ENDPOINT": str(self.socket),
            "PODS_DIR": str(self.pods_dir),
            "STATE_DIR": str(self.state_dir),
            "PROBE_PORT": str(self.probe_port),
            "PROXY_TIMEOUT": "60s",
            "LOG_LEVEL": "debug",
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "daemon.log"

    def start(self, timeout: float = 30.0) -> None:
        self._log_start = self.log.stat().st_size if self.log.exists() else 0
        self._logf = self.log.open("ab")
        self.proc = subprocess.Popen(
            [*self.wrapper, str(BIN), "serve", *self.args],
            env=self.env,
            stdout=self._logf,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"daemon exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}"
                )
            if self._serving():
                return
            time.sleep(0.02)
        self.proc.kill()  # never leave a daemon behind when start-up fails
        self.proc.wait(10)
        self._logf.close()
        raise TimeoutError(f"daemon did not listen:\n{self.log.read_text()[-4000:]}")

    def _serving(self) -> bool:
        """This process (not a predecessor on the same socket) logged that it serves, and it accepts."""
        quiet = self.env.get("LOG_LEVEL", "info").lower() in {"warning", "error"}
        if not quiet and SERVING_MARKER not in self.log.read_text(errors="replace")[self._log_start :]:
            return False
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(self.socket))
            return True
        except OSError:
            return False

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._logf.close()

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)
        finally:
            self._logf.close()
