"""The local provider's options and the frozen configuration built from them.

``LocalSettings`` declares the keys; every value is parsed and validated once,
when it is loaded, and each error names the option key (and, for the catalogue,
the bad entry), so a typo in a ConfigMap stops the daemon with a message that
says where to look.  ``LocalConfig`` is what the provider runs with: the mode
resolved against the user, the guest programs located.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cloud_api_adaptor.errors import ConfigError
from cloud_api_adaptor.options import custom, duration, settings, text
from cloud_api_adaptor.provider import InstanceTypeInfo

Mode = Literal["netns", "loopback"]

#: A small catalogue shaped like a cloud's: the smallest entry is the default type.
DEFAULT_CATALOGUE = "small:1:512,medium:2:2048,large:4:8192,xlarge:8:16384,gpu:4:16384:1"
DEFAULT_SUBNET = "198.18.0.0/16"
#: each VM gets one /30 of LOCAL_VM_SUBNET: network, host side, VM side, broadcast
BLOCK_PREFIX = 30

_DEFAULT_NETWORK = ipaddress.IPv4Network(DEFAULT_SUBNET)

# Where the VM-side programs live: console scripts next to the interpreter.
PROCESS_USER_DATA = "process-user-data"
FORWARDER = "agent-protocol-forwarder"
DEVAGENT_MODULE = "cloud_api_adaptor.vm.devagent"


def agent_socket_path(work_dir: Path, vm_id: str) -> Path:
    """Where a loopback VM's agent listens (the longest unix socket path the provider uses)."""
    return work_dir / "vms" / vm_id / "root" / "run" / "kata-containers" / "agent.sock"


@dataclass(frozen=True)
class GuestPrograms:
    """The commands a local VM runs; argv prefixes, completed per VM by the provider."""

    #: the interpreter that runs the guest launcher and the built-in agent
    python: str
    process_user_data: tuple[str, ...]
    forwarder: tuple[str, ...]
    #: empty: the built-in development agent (``python -m cloud_api_adaptor.vm.devagent``)
    agent: tuple[str, ...] = ()

    @classmethod
    def installed(cls, python: str) -> GuestPrograms:
        """The console scripts installed next to ``python`` (the venv's bin directory)."""
        bin_dir = Path(python).parent
        return cls(
            python=python,
            process_user_data=(str(bin_dir / PROCESS_USER_DATA),),
            forwarder=(str(bin_dir / FORWARDER),),
        )


@dataclass(frozen=True)
class LocalConfig:
    """Validated local-provider configuration."""

    mode: Mode
    programs: GuestPrograms
    subnet: ipaddress.IPv4Network = _DEFAULT_NETWORK
    #: seconds a VM waits before running its programs (simulated boot)
    boot_delay: float = 0.0
    catalogue: tuple[InstanceTypeInfo, ...] = ()
    forwarder_extra_args: tuple[str, ...] = ()
    #: seconds the launcher waits for the agent's socket before declaring the VM crashed
    agent_socket_timeout: float = 150.0
    #: seconds between SIGTERM and SIGKILL when a VM is deleted
    stop_timeout: float = 5.0
    #: seconds create_instance waits for the launcher to detach and report
    launch_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not self.catalogue:
            object.__setattr__(self, "catalogue", parse_catalogue("LOCAL_INSTANCE_TYPES", DEFAULT_CATALOGUE))

    @property
    def default_instance_type(self) -> str:
        """The smallest catalogue entry by (gpus, memory, vcpus), as best-fit selection orders them."""
        return min(self.catalogue, key=lambda t: (t.gpus, t.memory_mib, t.vcpus)).name

    @classmethod
    def from_settings(cls, chosen: LocalSettings, *, euid: int, python: str) -> LocalConfig:
        """The runtime configuration; ``euid`` decides ``LOCAL_MODE=auto``."""
        programs = GuestPrograms.installed(python)
        return cls(
            mode=resolve_mode("LOCAL_MODE", chosen.mode, euid=euid),
            programs=GuestPrograms(
                python=programs.python,
                process_user_data=programs.process_user_data,
                forwarder=programs.forwarder,
                agent=chosen.agent_command,
            ),
            subnet=chosen.subnet,
            boot_delay=chosen.boot_delay,
            catalogue=chosen.catalogue,
            forwarder_extra_args=chosen.forwarder_extra_args,
        )


def resolve_mode(key: str, value: str, *, euid: int) -> Mode:
    """``auto`` is netns as root, loopback otherwise; netns without root is an error."""
    if value == "auto":
        return "netns" if euid == 0 else "loopback"
    if value == "loopback":
        return "loopback"
    if value == "netns":
        if euid != 0:
            raise ConfigError(key, "netns mode needs root (use loopback or auto)")
        return "netns"
    raise ConfigError(key, f"unknown mode {value!r} (use auto, netns or loopback)")


def parse_subnet(key: str, raw: str) -> ipaddress.IPv4Network:
    """An IPv4 network with room for at least one /30 block."""
    try:
        net = ipaddress.ip_network(raw.strip(), strict=True)
    except ValueError as exc:
        raise ConfigError(key, f"invalid subnet {raw!r}: {exc}") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise ConfigError(key, f"{raw!r} is not an IPv4 subnet")
    if net.prefixlen > BLOCK_PREFIX:
        raise ConfigError(key, f"{net} is smaller than one /{BLOCK_PREFIX} block")
    if net.is_loopback or net.is_multicast or net.is_unspecified:
        raise ConfigError(key, f"{net} cannot number veth links")
    return net


def parse_catalogue(key: str, raw: str) -> tuple[InstanceTypeInfo, ...]:
    """Parse ``name:vcpus:memoryMiB[:gpus],...``; an error quotes the bad entry."""
    entries: list[InstanceTypeInfo] = []
    seen: set[str] = set()
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        fields = [f.strip() for f in entry.split(":")]
        if len(fields) not in (3, 4) or not fields[0]:
            raise ConfigError(key, f"bad entry {entry!r}: expected name:vcpus:memoryMiB[:gpus]")
        name = fields[0]
        try:
            numbers = [int(f, 10) for f in fields[1:]]
        except ValueError:
            raise ConfigError(key, f"bad entry {entry!r}: vcpus, memory and gpus must be integers") from None
        vcpus, memory = numbers[0], numbers[1]
        gpus = numbers[2] if len(numbers) == 3 else 0
        if vcpus <= 0 or memory <= 0 or gpus < 0:
            raise ConfigError(
                key, f"bad entry {entry!r}: vcpus and memory must be positive, gpus not negative"
            )
        if name in seen:
            raise ConfigError(key, f"bad entry {entry!r}: duplicate name {name!r}")
        seen.add(name)
        entries.append(InstanceTypeInfo(name=name, vcpus=vcpus, memory_mib=memory, gpus=gpus))
    if not entries:
        raise ConfigError(key, "the catalogue is empty")
    return tuple(entries)


def split_command(key: str, raw: str) -> tuple[str, ...]:
    """A command line split like a shell would; an unbalanced quote names ``key``."""
    try:
        return tuple(shlex.split(raw))
    except ValueError as exc:
        raise ConfigError(key, f"cannot split {raw!r}: {exc}") from None


@settings
class LocalSettings:
    """The local provider's keys."""

    subnet: ipaddress.IPv4Network = custom(
        "local-vm-subnet",
        "LOCAL_VM_SUBNET",
        "IPv4 subnet the local VMs' veth pairs are numbered from (netns mode; one /30 per VM).",
        default=_DEFAULT_NETWORK,
        default_text=DEFAULT_SUBNET,
        parse=parse_subnet,
    )
    boot_delay: float = duration(
        "local-boot-delay",
        "LOCAL_BOOT_DELAY",
        "Simulated cloud boot time before a local VM starts its programs.",
        default=0.0,
    )
    catalogue: tuple[InstanceTypeInfo, ...] = custom(
        "local-instance-types",
        "LOCAL_INSTANCE_TYPES",
        "Instance-type catalogue, name:vcpus:memoryMiB[:gpus],... (the smallest is the default type).",
        default=parse_catalogue("LOCAL_INSTANCE_TYPES", DEFAULT_CATALOGUE),
        default_text=DEFAULT_CATALOGUE,
        parse=parse_catalogue,
    )
    agent_command: tuple[str, ...] = custom(
        "local-agent-command",
        "LOCAL_AGENT_COMMAND",
        "Agent to run in each local VM (shell-split; gets KATA_AGENT_SERVER_ADDR). "
        "Empty: the built-in development agent, a stand-in for kata-agent.",
        default=(),
        default_text="",
        parse=split_command,
    )
    mode: str = text(
        "local-mode",
        "LOCAL_MODE",
        "auto, netns (own network and mount namespaces; needs root) or loopback (no root).",
        default="auto",
        choices=("auto", "netns", "loopback"),
    )
    forwarder_extra_args: tuple[str, ...] = custom(
        "local-forwarder-extra-args",
        "LOCAL_FORWARDER_EXTRA_ARGS",
        "Testing and debugging only: extra agent-protocol-forwarder flags (shell-split), e.g. -disable-tls.",
        default=(),
        default_text="",
        parse=split_command,
    )
