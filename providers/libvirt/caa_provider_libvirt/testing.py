"""Test support: a recording port for libvirt's test driver, and a private libvirtd.

``TestDriverConnection`` is the real ``LibvirtConnection`` with the one call the
``test:///`` driver lacks (volume upload) kept in memory, so the provider's
domain and volume logic runs against libvirt's own test driver.

``PrivateLibvirtd`` runs a real ``virtlogd`` + ``libvirtd`` (qemu driver) as root,
isolated from the host: its own network namespace (bridges, firewall rules and
qemu's taps stay there) and its own mount namespace with tmpfs over libvirt's
state, config, log and run directories (nothing persists; a host libvirtd, if
any, is untouched).  Only its client socket is visible, in a directory of ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from .port import LibvirtConnection

# Directories the packaged libvirtd writes to, hidden behind private tmpfs mounts.
_PRIVATE_DIRS = ("/run/libvirt", "/var/lib/libvirt", "/etc/libvirt", "/var/cache/libvirt", "/var/log/libvirt")

#: where libvirt's dnsmasq lease helper keeps per-bridge lease records (JSON)
_LEASE_DIR = "/var/lib/libvirt/dnsmasq"

_START_SCRIPT = """\
set -e
run="$1"
for d in {dirs}; do
  mkdir -p "$d"
  mount -t tmpfs -o mode=0755 tmpfs "$d"
done
mkdir -p /var/lib/libvirt/dnsmasq /var/lib/libvirt/images /var/lib/libvirt/qemu \
  /var/log/libvirt/qemu /var/cache/libvirt/qemu/capabilities
# Without KVM, hide /dev/kvm from this libvirtd.  libvirt probes qemu with KVM (it works
# for root) but then finds /dev/kvm closed to its qemu user (mode 0600), declares its
# capability cache stale and re-probes qemu on every call (8 s each); pod VMs run TCG.
# That bind mount is under /dev, which libvirt's per-domain /dev namespace would try
# to move: run qemu in this (already private) mount namespace instead.
# With KVM, qemu runs as root, which can open /dev/kvm.
if [ -e /dev/kvm ] && [ "$2" != kvm ]; then
  : > "$run/no-kvm"
  chmod 0600 "$run/no-kvm"
  mount --bind "$run/no-kvm" /dev/kvm
fi
echo 'namespaces = []' > /etc/libvirt/qemu.conf
if [ "$2" = kvm ]; then
  printf 'user = "root"\ngroup = "root"\n' >> /etc/libvirt/qemu.conf
fi
ip link set lo up
virtlogd &
echo $! > "$run/virtlogd.pid"
libvirtd --config "$run/libvirtd.conf" &
echo $! > "$run/libvirtd.pid"
wait
"""


class TestDriverConnection(LibvirtConnection):
    """``LibvirtConnection`` whose uploads land in ``uploads`` (the test driver cannot stream)."""

    __test__ = False  # not a pytest test class

    def __init__(self, uri: str = "test:///default") -> None:
        super().__init__(uri)
        self.uploads: dict[tuple[str, str], bytes] = {}
        #: when set, every call fails as if the daemon were unreachable
        self.broken = False
        #: the first N address look-ups answer nothing (exercises the wait)
        self.silent_address_lookups = 0

    def _connection(self) -> Any:
        if self.broken:
            import libvirt

            return libvirt.open("qemu+unix:///system?socket=/nonexistent/caa-test/libvirt-sock")
        return super()._connection()

    async def upload_volume(self, pool: str, name: str, data: bytes) -> None:
        await self.volume(pool, name)  # must exist, as for a real upload
        self.uploads[(pool, name)] = data

    async def interface_addresses(self, uuid: str, source: Any) -> Any:
        if self.silent_address_lookups > 0:
            self.silent_address_lookups -= 1
            return []
        return await super().interface_addresses(uuid, source)


def kvm_usable(device: str = "/dev/kvm") -> bool:
    """Whether KVM works here: the device opens, speaks API version 12 and makes a VM."""
    import fcntl

    kvm_get_api_version, kvm_create_vm = 0xAE00, 0xAE01
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if fcntl.ioctl(fd, kvm_get_api_version) != 12:
            return False
        os.close(fcntl.ioctl(fd, kvm_create_vm, 0))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class PrivateLibvirtd:
    """A root-only libvirtd + virtlogd in private network and mount namespaces."""

    def __init__(self, extra_config: str = "", *, kvm: bool = False) -> None:
        """``extra_config`` is appended to libvirtd.conf (e.g. ``log_filters`` when debugging).

        ``kvm``: let domains use KVM when it works here (qemu then runs as root); otherwise,
        and by default, this libvirtd sees no KVM and domains run under TCG.
        """
        self._extra_config = extra_config
        #: "kvm" when this libvirtd's domains can use KVM, else "tcg"
        self.accel = "kvm" if kvm and kvm_usable() else "tcg"
        suffix = uuid.uuid4().hex[:8]
        self.netns = f"caa-lv-{suffix}"
        # not under pytest's 0700 tmp tree: libvirt clients only need the socket, but keep it plain
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"caa-libvirtd-{suffix}-"))
        self.run_dir.chmod(0o755)
        self.socket = self.run_dir / "libvirt-sock"
        self._process: subprocess.Popen[bytes] | None = None
        self._netns_made = False

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket}"

    @property
    def shell_pid(self) -> int | None:
        """The pid of the shell that started (and waits for) both daemons."""
        return self._process.pid if self._process is not None else None

    @property
    def log_path(self) -> Path:
        return self.run_dir / "daemon.log"

    def start(self, timeout: float = 60.0) -> None:
        """Start the daemons and wait until the socket answers (raises with the log on failure)."""
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        self._netns_made = True
        (self.run_dir / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{self.run_dir}"\n'
            'unix_sock_rw_perms = "0700"\n'
            'unix_sock_ro_perms = "0700"\n'
            'auth_unix_rw = "none"\n'
            'auth_unix_ro = "none"\n' + self._extra_config
        )
        script = self.run_dir / "start.sh"
        script.write_text(_START_SCRIPT.format(dirs=" ".join(_PRIVATE_DIRS)))
        in_namespaces = ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--propagation", "private"]
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [*in_namespaces, "sh", str(script), str(self.run_dir), self.accel],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                log_text = self.log_path.read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"libvirtd did not start:\n{log_text}")
            time.sleep(0.1)

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        import libvirt

        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError:
            return False
        conn.close()
        return True

    def run_in_netns(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a command inside the daemon's network namespace (e.g. ``ip neigh add``)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv], check=True, capture_output=True, text=True
        )

    def write_dhcp_lease(self, bridge: str, mac: str, ip: str, hostname: str) -> None:
        """Stand in for dnsmasq: record a lease where libvirt's lease helper keeps them.

        libvirt answers ``interfaceAddresses(SRC_LEASE)`` from this JSON status file;
        the pod VM never boots an OS here, so nothing would ask dnsmasq for a lease.
        """
        pid = self.pid_of("libvirtd")
        if pid is None:
            raise RuntimeError("libvirtd is not running")
        lease = [
            {
                "ip-address": ip,
                "mac-address": mac,
                "hostname": hostname,
                "expiry-time": int(time.time()) + 3600,
            }
        ]
        subprocess.run(
            [
                "nsenter",
                "-t",
                str(pid),
                "-m",
                "--",
                "sh",
                "-c",
                'cat > "$1"',
                "sh",
                f"{_LEASE_DIR}/{bridge}.status",
            ],
            input=json.dumps(lease).encode(),
            check=True,
        )

    def pid_of(self, name: str) -> int | None:
        """The pid of ``libvirtd`` or ``virtlogd`` (None before they started)."""
        try:
            return int((self.run_dir / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def netns_pids(self) -> list[int]:
        """Processes still running in the daemon's network namespace."""
        if not self._netns_made:
            return []
        out = subprocess.run(["ip", "netns", "pids", self.netns], check=False, capture_output=True, text=True)
        return [int(p) for p in out.stdout.split() if p.isdigit()]

    def stop(self) -> None:
        """Stop what we started: any qemu left in our netns, libvirtd, virtlogd; remove the netns."""
        process, self._process = self._process, None
        if process is not None:
            daemons = {pid for pid in (self.pid_of("libvirtd"), self.pid_of("virtlogd")) if pid}
            # qemu processes (children of our libvirtd, re-parented) that a failed test left running
            for pid in self.netns_pids():
                if pid not in daemons and pid != process.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            for pid in daemons:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                for pid in daemons:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                process.kill()
                process.wait(timeout=30)
        if self._netns_made:
            subprocess.run(["ip", "netns", "del", self.netns], check=False)
            self._netns_made = False
        shutil.rmtree(self.run_dir, ignore_errors=True)
