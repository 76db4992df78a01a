"""The guest launcher: the "firmware and init" of one local VM.

``python -m cloud_api_adaptor.localvm.guest <vm-dir>/launch.json``

It detaches at once (fork, ``setsid``), so the VM is not the daemon's child and
survives a ``kill -9`` of the daemon, and leads a session of its own that holds
every VM process.  In netns mode it then becomes the VM: its own network
namespace (named for the provider to plug a veth into), a private mount
namespace with the real default paths, its own hostname.  It reports on
stdout, one JSON line at a time: ``{"pid", "start_time"}`` (the provider records
it and plugs in the VM's NIC), then ``{"ready"}`` once the VM's address is
configured, or ``{"error"}``; closing stdout is when ``create_instance`` returns.

Then it boots, as the pod VM's systemd units would: wait ``boot_delay``, run
``process-user-data provision-files``, start the agent, wait for its socket,
start ``agent-protocol-forwarder``, and supervise.  If the agent or the
forwarder exits, the VM has crashed: the launcher stops the other one, records
the reason in ``status.json`` and exits.  SIGTERM stops the VM cleanly.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from cloud_api_adaptor.fsutil import atomic_write

logger = logging.getLogger("cloud_api_adaptor.localvm.guest")

SPEC_FILE = "launch.json"
STATUS_FILE = "status.json"
LOG_DIR = "logs"


@dataclass(frozen=True)
class LaunchSpec:
    """Everything the launcher needs, written by the provider next to the VM's files."""

    vm_id: str
    name: str
    mode: str
    vm_dir: str
    agent_socket: str
    process_user_data: tuple[str, ...]
    agent: tuple[str, ...]
    forwarder: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    agent_env: dict[str, str] = field(default_factory=dict)
    boot_delay: float = 0.0
    agent_socket_timeout: float = 150.0
    stop_timeout: float = 5.0
    #: how long the VM waits for the provider to plug in its NIC
    link_timeout: float = 30.0
    # netns mode only
    netns_path: str | None = None
    cidata_dir: str | None = None
    vm_address: str | None = None
    host_address: str | None = None
    prefixlen: int | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LaunchSpec:
        body: dict[str, Any] = json.loads(data)
        for key in ("process_user_data", "agent", "forwarder"):
            body[key] = tuple(body[key])
        return cls(**body)


class _Stop(BaseException):
    """SIGTERM/SIGINT: stop the VM cleanly."""


class _Crash(Exception):
    """A VM program failed: the VM is down."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _shutting_down()  # a second SIGTERM must not interrupt the shutdown the first one started
    raise _Stop(signal.Signals(signum).name)


def _shutting_down() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _self_start_time() -> int:
    text = Path("/proc/self/stat").read_text()
    return int(text.rpartition(")")[2].split()[19])


class Guest:
    """One VM's boot and supervision (runs in the detached launcher process)."""

    def __init__(self, spec: LaunchSpec) -> None:
        self.spec = spec
        self.dir = Path(spec.vm_dir)
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.pid = os.getpid()
        self.start_time = _self_start_time()

    def status(self, phase: str, detail: str = "") -> None:
        body = {
            "phase": phase,
            "detail": detail,
            "pid": self.pid,
            "start_time": self.start_time,
            "at": time.time(),
        }
        try:
            atomic_write(self.dir / STATUS_FILE, json.dumps(body).encode(), mode=0o644)
        except OSError as exc:
            logger.warning("cannot write status %s: %s", phase, exc)

    def enter(self) -> None:
        """Become the VM (netns mode); loopback VMs share the host's namespaces."""
        if self.spec.mode != "netns":
            return
        from cloud_api_adaptor.localvm import netns

        assert self.spec.netns_path and self.spec.cidata_dir
        netns.enter_vm_namespaces(Path(self.spec.netns_path), Path(self.spec.cidata_dir), self.spec.name)

    def run(self) -> int:
        """Boot and supervise; returns the exit code once the VM is down (stopped or crashed)."""
        try:
            self._boot()
            self.status("running")
            logger.info("VM %s running", self.spec.vm_id)
            self._supervise()
        except _Stop as stop:
            _shutting_down()
            logger.info("VM %s stopping (%s)", self.spec.vm_id, stop)
            self.status("stopping")
            self._stop_children()
            self.status("stopped")
            return 0
        except Exception as exc:
            _shutting_down()
            logger.error("VM %s crashed: %s", self.spec.vm_id, exc)
            self.status("crashed", str(exc))
            self._stop_children()
            return 1
        finally:
            _shutting_down()
            self._stop_children()

    def configure_network(self) -> None:
        """netns mode: the pod namespace, then eth0 once the provider has plugged it in."""
        spec = self.spec
        if spec.mode != "netns":
            return
        from cloud_api_adaptor.localvm import netns

        assert spec.vm_address and spec.host_address and spec.prefixlen
        self.status("network")
        netns.create_pod_netns()
        netns.configure_vm_link(
            ipaddress.IPv4Address(spec.vm_address),
            spec.prefixlen,
            ipaddress.IPv4Address(spec.host_address),
            timeout=spec.link_timeout,
        )

    def _boot(self) -> None:
        spec = self.spec
        if spec.boot_delay > 0:
            self.status("booting")
            time.sleep(spec.boot_delay)
        self.status("provisioning")
        code = self._start("process-user-data", spec.process_user_data).wait()
        self.children.pop("process-user-data", None)
        if code != 0:
            raise _Crash(f"process-user-data exited with {code}")
        self.status("starting-agent")
        Path(spec.agent_socket).parent.mkdir(parents=True, exist_ok=True)
        agent = self._start("agent", spec.agent, spec.agent_env)
        self._wait_for_socket(agent)
        self.status("starting-forwarder")
        self._start("forwarder", spec.forwarder)

    def _start(
        self, name: str, argv: tuple[str, ...], extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.dir / LOG_DIR / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            child = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self.spec.env, **(extra_env or {})},
                close_fds=True,
            )
        except OSError as exc:
            raise _Crash(f"cannot start {name} ({argv[0]}): {exc}") from exc
        finally:
            log.close()
        logger.info("started %s (pid %d): %s", name, child.pid, " ".join(argv))
        self.children[name] = child
        return child

    def _wait_for_socket(self, agent: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.spec.agent_socket_timeout
        while True:
            code = agent.poll()
            if code is not None:
                raise _Crash(f"agent exited with {code} before listening")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(self.spec.agent_socket)
                    return
                except OSError:
                    pass
            if time.monotonic() >= deadline:
                waited = self.spec.agent_socket_timeout
                raise _Crash(f"agent socket {self.spec.agent_socket} not ready after {waited:g}s")
            time.sleep(0.01)

    def _supervise(self) -> NoReturn:
        """Block until the agent or the forwarder exits (pidfds: no polling, no stolen wait statuses)."""
        fds = {os.pidfd_open(child.pid): name for name, child in self.children.items()}
        try:
            while True:
                ready, _, _ = select.select(list(fds), [], [])
                for fd in ready:
                    name = fds[fd]
                    code = self.children[name].wait()
                    raise _Crash(f"{name} exited with {code}")
        finally:
            for fd in fds:
                os.close(fd)

    def _stop_children(self) -> None:
        alive = [c for c in self.children.values() if c.poll() is None]
        for child in alive:
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
        deadline = time.monotonic() + self.spec.stop_timeout
        for child in alive:
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.children.clear()


def _report(body: dict[str, Any], *, last: bool) -> None:
    """One JSON line on stdout (the provider's pipe); after the last, stdout joins the log."""
    os.write(1, json.dumps(body).encode() + b"\n")
    if last:
        os.dup2(2, 1)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m cloud_api_adaptor.localvm.guest <launch.json>", file=sys.stderr)
        return 2
    spec = LaunchSpec.from_json(Path(args[0]).read_bytes())
    if os.fork() != 0:
        os._exit(0)  # the provider reaps this parent; the VM lives on in the child
    os.setsid()
    # Keep only stdin/stdout/stderr: a descriptor inherited without CLOEXEC (uvloop's spawn leaks
    # a duplicate of the report pipe) would outlive the last report and hold the provider's read open.
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s {spec.vm_id}: %(message)s", stream=sys.stderr
    )
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    guest = Guest(spec)
    guest.status("starting")
    try:
        guest.enter()
        # The provider records who we are, then plugs in the NIC; we report again once the
        # VM's address is live, so a dial to it is refused at once rather than left unanswered.
        _report({"pid": guest.pid, "start_time": guest.start_time}, last=False)
        guest.configure_network()
    except _Stop:
        guest.status("stopped")
        _report({"error": "stopped while starting"}, last=True)
        return 0
    except Exception as exc:
        logger.error("cannot set up VM %s: %s", spec.vm_id, exc)
        guest.status("failed", str(exc))
        _report({"error": str(exc)}, last=True)
        return 1
    _report({"ready": True}, last=True)
    return guest.run()


if __name__ == "__main__":
    raise SystemExit(main())
