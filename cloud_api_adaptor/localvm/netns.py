"""Namespaces, mounts and veth links for netns-mode local VMs.

Two sides, like a cloud and its VM:

- the guest launcher (``guest.py``, root, single-threaded right after it forks)
  creates the VM's network namespace by unsharing it and binding it at
  ``/run/netns/<name>`` (as ``ip netns add`` does), then enters a private mount
  namespace where tmpfs covers ``/run/peerpod``, ``/run/kata-containers`` and
  ``/run/netns`` and the cidata directory appears at ``/media/cidata``, so the
  VM-side programs run with their real default paths;
- the provider ("the cloud") plugs a veth pair into that namespace from the
  daemon's namespace and numbers the host side; the guest numbers its own side
  (eth0), as a VM's network configuration would.

The provider never forks: it only needs netlink in its own namespace.  System
calls go through ctypes because Python 3.11 has no ``os.unshare``/``os.setns``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

NETNS_RUN_DIR = Path("/run/netns")
VM_IFNAME = "eth0"

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20
MNT_DETACH = 0x2

#: a VM's own /run: a fresh tmpfs, so whatever its programs write there (the agent's
#: /run/kata-containers and /run/sandbox-ns, the forwarder's /run/peerpod) stays in the VM
VM_RUN_DIR = Path("/run")
#: directories the pod VM image's services expect in /run, made in the VM's fresh tmpfs
VM_RUN_SUBDIRS = ("peerpod", "kata-containers", "netns")
MEDIA_DIR = Path("/media")
CIDATA_MOUNT = MEDIA_DIR / "cidata"
POD_NETNS = "podns"

_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_c().unshare(ctypes.c_int(flags)), "unshare")


def mount(source: str, target: Path | str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _c().mount(
            os.fsencode(source),
            os.fsencode(target),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source} on {target}",
    )


def umount(target: Path | str, flags: int = MNT_DETACH) -> None:
    _check(_c().umount2(os.fsencode(target), ctypes.c_int(flags)), f"umount {target}")


def sethostname(name: str) -> None:
    raw = name.encode()[:64]
    _check(_c().sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


# -- mount table ------------------------------------------------------------------------------------------


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """Mountinfo escapes space, tab, newline and backslash as ``\\ooo``."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mount_points(mountinfo: str) -> list[str]:
    """Mount points from ``/proc/self/mountinfo`` text, in table order."""
    points = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:
            points.append(_unescape(fields[4]))
    return points


def mounts_under(points: Sequence[str], top: Path) -> list[str]:
    """Mount points at or below ``top``, deepest first (the order to detach them in)."""
    prefix = str(top).rstrip("/") + "/"
    inside = {p for p in points if p == str(top) or p.startswith(prefix)}
    return sorted(inside, key=lambda p: (p.count("/"), p), reverse=True)


def _detach_all_under(top: Path) -> None:
    points = parse_mount_points(Path("/proc/self/mountinfo").read_text())
    for point in mounts_under(points, top):
        with contextlib.suppress(OSError):
            umount(point, MNT_DETACH)


# -- guest side ---------------------------------------------------------------------------------------------


def bind_own_netns(path: Path) -> None:
    """Name the calling process's network namespace at ``path`` (``ip netns add``'s mount dance).

    Must run in the host's mount namespace.  The run directory is made a shared
    mount first, as iproute2 does, so the name is visible in every mount
    namespace that shares it.
    """
    run_dir = path.parent
    run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        mount("", run_dir, "none", MS_SHARED | MS_REC)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        mount(str(run_dir), run_dir, "none", MS_BIND | MS_REC)
        mount("", run_dir, "none", MS_SHARED | MS_REC)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    try:
        mount("/proc/self/ns/net", path, "none", MS_BIND)
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


def enter_vm_namespaces(netns_path: Path, cidata_dir: Path, hostname: str) -> None:
    """Become the VM: own netns (named at ``netns_path``), private mounts, own hostname.

    Call in a single-threaded process.  Any mounts of other namespaces under
    /run/netns are detached in the copy, so this VM's mount namespace never keeps
    another VM's network namespace alive after that VM is deleted.
    """
    unshare(CLONE_NEWNET)
    bind_own_netns(netns_path)
    unshare(CLONE_NEWNS | CLONE_NEWUTS)
    mount("none", "/", None, MS_REC | MS_PRIVATE)
    sethostname(hostname)
    # /media first: the cidata source may live under one of the tmpfs targets.
    _detach_all_under(MEDIA_DIR)
    MEDIA_DIR.mkdir(mode=0o755, exist_ok=True)
    mount("tmpfs", MEDIA_DIR, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    CIDATA_MOUNT.mkdir(mode=0o755)
    mount(str(cidata_dir), CIDATA_MOUNT, None, MS_BIND)
    mount("none", CIDATA_MOUNT, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    _detach_all_under(VM_RUN_DIR)
    mount("tmpfs", VM_RUN_DIR, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for name in VM_RUN_SUBDIRS:
        (VM_RUN_DIR / name).mkdir(mode=0o755, exist_ok=True)
    # /sys shows the namespace that mounted it; remount it so /sys/class/net is the VM's.
    try:
        umount("/sys", MNT_DETACH)
        mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV)
    except OSError as exc:
        logger.warning("could not remount /sys in the VM: %s", exc)


def create_pod_netns(name: str = POD_NETNS) -> None:
    """Create the pod network namespace inside the VM (netns@podns), loopback up.

    Runs in a forked child so the launcher stays in the VM's own namespace.
    """
    path = NETNS_RUN_DIR / name
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            unshare(CLONE_NEWNET)
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
            mount("/proc/self/ns/net", path, "none", MS_BIND)
            _links_up(["lo"])
            code = 0
        except BaseException as exc:
            os.write(2, f"creating netns {name}: {exc}\n".encode())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise OSError(errno.EIO, f"could not create network namespace {name}")


def _links_up(names: Sequence[str]) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for name in names:
            for index in ipr.link_lookup(ifname=name):
                ipr.link("set", index=index, state="up")


def configure_vm_link(
    address: ipaddress.IPv4Address,
    prefixlen: int,
    gateway: ipaddress.IPv4Address,
    *,
    timeout: float,
    ifname: str = VM_IFNAME,
) -> None:
    """In the VM's netns: lo up, wait for the provider's veth end, number it, default route via the host."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for index in ipr.link_lookup(ifname="lo"):
            ipr.link("set", index=index, state="up")
        deadline = time.monotonic() + timeout
        while not (found := ipr.link_lookup(ifname=ifname)):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{ifname} did not appear within {timeout:g}s")
            time.sleep(0.01)
        index = found[0]
        ipr.addr("add", index=index, address=str(address), prefixlen=prefixlen)
        ipr.link("set", index=index, state="up")
        ipr.route("add", dst="0.0.0.0/0", gateway=str(gateway))


# -- provider (host) side -----------------------------------------------------------------------------------


def plug_veth(host_ifname: str, guest_pid: int, host_address: ipaddress.IPv4Address, prefixlen: int) -> None:
    """Create the veth pair: ``host_ifname`` here, ``eth0`` in the guest's netns; number the host side."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("add", ifname=host_ifname, kind="veth", peer={"ifname": VM_IFNAME, "net_ns_pid": guest_pid})
        index = ipr.link_lookup(ifname=host_ifname)[0]
        ipr.addr("add", index=index, address=str(host_address), prefixlen=prefixlen)
        ipr.link("set", index=index, state="up")


def ensure_local_address(address: ipaddress.IPv4Address, ifname: str = "lo") -> bool:
    """Give ``ifname`` the host address ``address``/32 unless it has it; True if added."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        for msg in ipr.get_addr(family=2, index=index):
            if msg.get_attr("IFA_ADDRESS") == str(address) and msg["prefixlen"] == 32:
                return False
        try:
            ipr.addr("add", index=index, address=str(address), prefixlen=32)
        except _netlink_error() as exc:
            if getattr(exc, "code", None) != errno.EEXIST:
                raise
            return False
    return True


def remove_local_address(address: ipaddress.IPv4Address, ifname: str = "lo") -> bool:
    """Remove ``address``/32 from ``ifname``; missing is fine.  True if removed."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for index in ipr.link_lookup(ifname=ifname):
            try:
                ipr.addr("del", index=index, address=str(address), prefixlen=32)
            except _netlink_error() as exc:
                if getattr(exc, "code", None) not in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                    raise
                return False
            return True
    return False


def remove_link(ifname: str) -> None:
    """Delete a link (a veth takes its peer with it); missing is fine."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for index in ipr.link_lookup(ifname=ifname):
            with contextlib.suppress(_netlink_error()):
                ipr.link("del", index=index)


def host_ipv4_addresses() -> list[tuple[str, ipaddress.IPv4Interface]]:
    """(interface name, address/prefix) of every IPv4 address in the caller's netns."""
    from pyroute2 import IPRoute

    out: list[tuple[str, ipaddress.IPv4Interface]] = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for msg in ipr.get_addr(family=2):
            addr = msg.get_attr("IFA_ADDRESS")
            if addr:
                out.append(
                    (names.get(msg["index"], "?"), ipaddress.IPv4Interface(f"{addr}/{msg['prefixlen']}"))
                )
    return out


def remove_netns(path: Path) -> None:
    """Unbind and unlink a named network namespace; missing is fine."""
    with contextlib.suppress(OSError):
        umount(path, MNT_DETACH)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _netlink_error() -> type[Exception]:
    from pyroute2.netlink.exceptions import NetlinkError

    err: type[Exception] = NetlinkError
    return err
