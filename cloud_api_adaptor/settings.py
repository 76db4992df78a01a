"""The daemon's settings: option definitions and the frozen dataclasses built from them.

``DAEMON_OPTIONS`` is the single source of truth for the daemon's own flags and
environment keys (the Go version's names, so an existing ``peer-pods-cm`` works
unchanged).  Providers declare their own options on their plugin object.
``Settings.from_values`` validates everything once, at start-up; every error
names the key at fault.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from cloud_api_adaptor.errors import ConfigError
from cloud_api_adaptor.options import Option, OptionValues

DEFAULT_SOCKET = "/run/peerpod/hypervisor.sock"
DEFAULT_PODS_DIR = "/run/peerpod/pods"
DEFAULT_STATE_DIR = "/var/lib/cloud-api-adaptor"
MAX_UNIX_PATH = 107

DAEMON_OPTIONS: tuple[Option, ...] = (
    Option("provider", "CLOUD_PROVIDER", "local", "Cloud provider plugin to use (entry point name)."),
    Option("socket", "REMOTE_HYPERVISOR_ENDPOINT", DEFAULT_SOCKET, "Unix socket Kata's shim dials (ttrpc)."),
    Option("grpc-socket", "GRPC_ENDPOINT", "", "Optional second unix socket serving the same API over gRPC."),
    Option("pods-dir", "PODS_DIR", DEFAULT_PODS_DIR, "Directory for per-sandbox agent sockets."),
    Option("state-dir", "STATE_DIR", DEFAULT_STATE_DIR, "Directory for durable sandbox records (new)."),
    Option(
        "forwarder-port",
        "FORWARDER_PORT",
        "15150",
        "TCP port of agent-protocol-forwarder in the pod VM.",
        "int",
    ),
    Option(
        "proxy-timeout",
        "PROXY_TIMEOUT",
        "5m",
        "How long StartVM waits for the pod VM's forwarder.",
        "duration",
    ),
    Option("ca-cert-file", "CACERT_FILE", "", "CA certificate for the agent channel (default: generated)."),
    Option("cert-file", "CERT_FILE", "", "Client certificate for the agent channel (default: generated)."),
    Option("cert-key", "CERT_KEY", "", "Client key for the agent channel (default: generated)."),
    Option(
        "tls-skip-verify", "TLS_SKIP_VERIFY", "false", "Skip verifying the forwarder's certificate.", "bool"
    ),
    Option("tls-min-version", "TLS_MIN_VERSION", "", "VersionTLS12 or VersionTLS13 (TLS 1.2 floor)."),
    Option(
        "tls-cipher-suites",
        "TLS_CIPHER_SUITES",
        "",
        "Comma-separated IANA cipher suite names (TLS 1.2).",
        "list",
    ),
    Option("disable-tls", None, "false", "Plain TCP to the forwarder (must match the pod VM).", "bool"),
    Option(
        "initdata", "INITDATA", "", "Default initdata (gzip+base64 TOML) for pods without the annotation."
    ),
    Option("pod-vm-instance-type", "PODVM_INSTANCE_TYPE", "", "Default instance type.", group="instance"),
    Option(
        "pod-vm-instance-types",
        "PODVM_INSTANCE_TYPES",
        "",
        "Allowed instance types.",
        "list",
        group="instance",
    ),
    Option(
        "enable-scratch-space", "ENABLE_SCRATCH_SPACE", "false", "Ask the pod VM for scratch space.", "bool"
    ),
    Option("tunnel-type", "TUNNEL_TYPE", "vxlan", "Pod network tunnel type (only vxlan).", group="network"),
    Option("vxlan-port", "VXLAN_PORT", "4789", "VXLAN UDP port.", "int", group="network"),
    Option("vxlan-min-id", "VXLAN_MIN_ID", "555000", "First VXLAN VNI to allocate.", "int", group="network"),
    Option(
        "host-interface",
        "HOST_INTERFACE",
        "",
        "Worker interface for the tunnel (default: auto).",
        group="network",
    ),
    Option(
        "ext-network-via-podvm",
        "EXTERNAL_NETWORK_VIA_PODVM",
        "false",
        "Route the pod's external traffic through the pod VM (multi-NIC).",
        "bool",
        group="network",
    ),
    Option(
        "pod-subnet-cidrs",
        "POD_SUBNET_CIDRS",
        "",
        "Cluster pod subnets kept on the tunnel when external traffic goes via the pod VM.",
        "list",
        group="network",
    ),
    Option("peerpods-limit-per-node", "PEERPODS_LIMIT_PER_NODE", "10", "Peer pods per node.", "int"),
    Option("probe-port", "PROBE_PORT", "8000", "Port of the startup probe on 127.0.0.1.", "int"),
    Option("node-name", "NODE_NAME", "", "Kubernetes node name (owner tag on instances)."),
    Option("cluster-id", "CLUSTER_ID", "", "Cluster identifier (owner tag on instances)."),
    Option("tags", "TAGS", "", "Extra instance tags, k1=v1,k2=v2.", "keyvalue"),
    Option(
        "orphan-scan-interval",
        "ORPHAN_SCAN_INTERVAL",
        "5m",
        "How often to look for orphaned VMs.",
        "duration",
    ),
    Option(
        "orphan-grace-period",
        "ORPHAN_GRACE_PERIOD",
        "2m",
        "Minimum age before an orphan is deleted.",
        "duration",
    ),
    Option("log-level", "LOG_LEVEL", "info", "debug, info, warning or error."),
)


@dataclass(frozen=True)
class TlsSettings:
    """Agent-channel TLS configuration (validated by proxy.tls at start-up)."""

    disabled: bool = False
    ca_cert_file: str = ""
    cert_file: str = ""
    cert_key: str = field(default="", repr=False)
    skip_verify: bool = False
    min_version: str = ""
    cipher_suites: tuple[str, ...] = ()


@dataclass(frozen=True)
class NetworkSettings:
    """Pod network tunnel settings."""

    tunnel_type: str = "vxlan"
    vxlan_port: int = 4789
    vxlan_min_id: int = 555000
    host_interface: str = ""
    external_net_via_pod_vm: bool = False
    pod_subnet_cidrs: tuple[ipaddress.IPv4Network, ...] = ()


@dataclass(frozen=True)
class Settings:
    """Everything the daemon needs, validated once and passed down."""

    provider: str = "local"
    socket: Path = Path(DEFAULT_SOCKET)
    grpc_socket: Path | None = None
    pods_dir: Path = Path(DEFAULT_PODS_DIR)
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    forwarder_port: int = 15150
    proxy_timeout: float = 300.0
    tls: TlsSettings = field(default_factory=TlsSettings)
    initdata: str = field(default="", repr=False)
    instance_type: str = ""
    instance_types: tuple[str, ...] = ()
    enable_scratch_space: bool = False
    network: NetworkSettings = field(default_factory=NetworkSettings)
    peerpods_limit_per_node: int = 10
    probe_port: int = 8000
    node_name: str = ""
    cluster_id: str = ""
    tags: tuple[tuple[str, str], ...] = ()
    orphan_scan_interval: float = 300.0
    orphan_grace_period: float = 120.0
    log_level: str = "info"

    @classmethod
    def from_values(cls, v: OptionValues) -> Settings:
        """Build and validate; every error names the key."""
        socket = _abs_path(v, "REMOTE_HYPERVISOR_ENDPOINT")
        if len(str(socket).encode()) > MAX_UNIX_PATH:
            raise ConfigError("REMOTE_HYPERVISOR_ENDPOINT", f"socket path longer than {MAX_UNIX_PATH} bytes")
        grpc_raw = v.str("GRPC_ENDPOINT").removeprefix("unix://")
        level = v.str("LOG_LEVEL", "info").lower()
        if level not in {"debug", "info", "warning", "error"}:
            raise ConfigError("LOG_LEVEL", f"unknown level {level!r}")
        tunnel = v.str("TUNNEL_TYPE", "vxlan")
        if tunnel != "vxlan":
            raise ConfigError("TUNNEL_TYPE", f'unknown tunnel type: "{tunnel}"')
        return cls(
            provider=v.str("CLOUD_PROVIDER", "local") or "local",
            socket=socket,
            grpc_socket=Path(grpc_raw) if grpc_raw else None,
            pods_dir=_abs_path(v, "PODS_DIR"),
            state_dir=_abs_path(v, "STATE_DIR"),
            forwarder_port=v.int("FORWARDER_PORT", 15150, minimum=1, maximum=65535),
            proxy_timeout=_positive(v, "PROXY_TIMEOUT", v.duration("PROXY_TIMEOUT", 300.0)),
            tls=TlsSettings(
                disabled=v.bool("disable-tls"),
                ca_cert_file=v.str("CACERT_FILE"),
                cert_file=v.str("CERT_FILE"),
                cert_key=v.str("CERT_KEY"),
                skip_verify=v.bool("TLS_SKIP_VERIFY"),
                min_version=v.str("TLS_MIN_VERSION").strip(),
                cipher_suites=v.list("TLS_CIPHER_SUITES"),
            ),
            initdata=v.str("INITDATA").strip(),
            instance_type=v.str("PODVM_INSTANCE_TYPE").strip(),
            instance_types=v.list("PODVM_INSTANCE_TYPES"),
            enable_scratch_space=v.bool("ENABLE_SCRATCH_SPACE"),
            network=NetworkSettings(
                tunnel_type=tunnel,
                vxlan_port=v.int("VXLAN_PORT", 4789, minimum=1, maximum=65535),
                vxlan_min_id=v.int("VXLAN_MIN_ID", 555000, minimum=1, maximum=(1 << 24) - 1),
                host_interface=v.str("HOST_INTERFACE").strip(),
                external_net_via_pod_vm=v.bool("EXTERNAL_NETWORK_VIA_PODVM"),
                pod_subnet_cidrs=_cidrs(v, "POD_SUBNET_CIDRS"),
            ),
            peerpods_limit_per_node=v.int("PEERPODS_LIMIT_PER_NODE", 10, minimum=0),
            probe_port=v.int("PROBE_PORT", 8000, minimum=0, maximum=65535),
            node_name=v.str("NODE_NAME").strip(),
            cluster_id=v.str("CLUSTER_ID").strip(),
            tags=tuple(sorted(v.keyvalue("TAGS").items())),
            orphan_scan_interval=_positive(
                v, "ORPHAN_SCAN_INTERVAL", v.duration("ORPHAN_SCAN_INTERVAL", 300.0)
            ),
            orphan_grace_period=v.duration("ORPHAN_GRACE_PERIOD", 120.0),
            log_level=level,
        )


_SAFE_PATH = re.compile(r"^/[^\x00]*$")


def _abs_path(v: OptionValues, key: str) -> Path:
    raw = v.str(key).strip().removeprefix("unix://")
    if not _SAFE_PATH.match(raw):
        raise ConfigError(key, f"must be an absolute path, got {raw!r}")
    return Path(raw)


def _cidrs(v: OptionValues, key: str) -> tuple[ipaddress.IPv4Network, ...]:
    result = []
    for raw in v.list(key):
        try:
            result.append(ipaddress.IPv4Network(raw, strict=False))
        except ValueError as exc:
            raise ConfigError(key, f"invalid IPv4 CIDR {raw!r}: {exc}") from None
    return tuple(result)


def _positive(v: OptionValues, key: str, value: float) -> float:
    if value <= 0:
        raise ConfigError(key, "must be positive")
    return value
