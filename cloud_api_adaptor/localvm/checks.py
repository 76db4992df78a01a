"""What ``verify()`` (``cloud-api-adaptor doctor``) checks for the local provider, and start-up limits.

Blocking; ``LocalProvider.verify`` runs it in a thread.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from cloud_api_adaptor.errors import ConfigError
from cloud_api_adaptor.localvm.config import DEVAGENT_MODULE, LocalConfig, agent_socket_path
from cloud_api_adaptor.provider import CheckResult

MAX_UNIX_PATH = 107
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
#: paths a netns-mode VM covers with its own mounts; its files must live elsewhere
_VM_MOUNTS = ("/run", "/media")


def validate_work_dir(config: LocalConfig, work_dir: Path) -> None:
    """Refuse a work directory the VMs could not use; raised at build time, naming the key to change."""
    if config.mode == "loopback":
        longest = agent_socket_path(work_dir, "local-0123456789")
        if len(os.fsencode(longest)) > MAX_UNIX_PATH:
            raise ConfigError(
                "STATE_DIR",
                f"loopback VMs need unix socket paths like {longest} ({len(os.fsencode(longest))} bytes, "
                f"limit {MAX_UNIX_PATH}); use a shorter STATE_DIR or LOCAL_MODE=netns",
            )
    else:
        resolved = str(work_dir.resolve())
        for top in _VM_MOUNTS:
            if resolved == top or resolved.startswith(top + "/"):
                raise ConfigError(
                    "STATE_DIR", f"{work_dir} is under {top}, which each netns-mode VM mounts over"
                )


def _capabilities() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_mode(config: LocalConfig) -> CheckResult:
    if config.mode == "loopback":
        return CheckResult(
            "local.mode", True, "loopback: VMs share the host's namespaces, one 127.x address each"
        )
    caps = _capabilities()
    missing = [
        name
        for bit, name in ((CAP_SYS_ADMIN, "CAP_SYS_ADMIN"), (CAP_NET_ADMIN, "CAP_NET_ADMIN"))
        if not caps >> bit & 1
    ]
    if os.geteuid() != 0 or missing:
        return CheckResult(
            "local.mode", False, f"netns mode needs root with {', '.join(missing) or 'capabilities'}"
        )
    if not Path("/proc/self/ns/net").exists():
        return CheckResult("local.mode", False, "netns mode: this kernel has no network namespaces")
    return CheckResult("local.mode", True, "netns: each VM has its own network, mount and UTS namespaces")


def _program_problem(argv: tuple[str, ...]) -> str | None:
    if not argv:
        return "empty command"
    path = argv[0]
    if os.sep in path:
        return None if os.access(path, os.X_OK) else f"{path} is not an executable file"
    return None if shutil.which(path) else f"{path} is not on PATH"


def check_programs(config: LocalConfig) -> CheckResult:
    programs = config.programs
    problems = [
        problem
        for argv in (programs.process_user_data, programs.forwarder, (programs.python,))
        if (problem := _program_problem(argv))
    ]
    if programs.agent:
        if problem := _program_problem(programs.agent):
            problems.append(f"LOCAL_AGENT_COMMAND: {problem}")
    elif importlib.util.find_spec(DEVAGENT_MODULE) is None:
        problems.append(f"the built-in agent {DEVAGENT_MODULE} is not installed")
    if problems:
        return CheckResult("local.programs", False, "; ".join(problems))
    agent = " ".join(programs.agent) if programs.agent else "built-in development agent"
    return CheckResult("local.programs", True, f"process-user-data, agent-protocol-forwarder, {agent}")


@dataclass(frozen=True)
class CheckInputs:
    """What ``doctor`` looks at, gathered by the provider (so this module needs nothing of it)."""

    config: LocalConfig
    work_dir: Path
    #: directories the provider writes below ``work_dir``
    dirs: tuple[Path, ...]
    #: host-side link names of our own VMs, which may carry subnet addresses
    own_links: Callable[[], set[str]]
    endpoint: IPv4Address | None


def check_subnet(inputs: CheckInputs) -> CheckResult:
    """The subnet must not overlap an address the host already has, other than our VM links and endpoint."""
    from cloud_api_adaptor.localvm import netns

    subnet = inputs.config.subnet
    ours = inputs.own_links()
    endpoint = inputs.endpoint
    try:
        addresses = netns.host_ipv4_addresses()
    except Exception as exc:
        return CheckResult("local.subnet", False, f"cannot list host addresses: {exc}")
    clashes = [
        f"{iface} on {name}"
        for name, iface in addresses
        if iface.network.overlaps(subnet)
        and name not in ours
        and not (name == "lo" and iface.ip == endpoint and iface.network.prefixlen == 32)
    ]
    if clashes:
        return CheckResult("local.subnet", False, f"LOCAL_VM_SUBNET {subnet} is in use: {', '.join(clashes)}")
    return CheckResult("local.subnet", True, f"LOCAL_VM_SUBNET {subnet} is free")


def check_work_dir(inputs: CheckInputs) -> CheckResult:
    work_dir = inputs.work_dir
    try:
        validate_work_dir(inputs.config, work_dir)
        for directory in inputs.dirs:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except (ConfigError, OSError) as exc:
        return CheckResult("local.work-dir", False, str(exc))
    if not os.access(work_dir, os.W_OK):
        return CheckResult("local.work-dir", False, f"{work_dir} is not writable")
    return CheckResult("local.work-dir", True, str(work_dir))


def run_checks(inputs: CheckInputs) -> list[CheckResult]:
    results = [check_mode(inputs.config), check_programs(inputs.config), check_work_dir(inputs)]
    if inputs.config.mode == "netns":
        results.append(check_subnet(inputs))
    return results
