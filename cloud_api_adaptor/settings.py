"""The daemon's settings: every flag and environment key, declared on the dataclass it fills.

The keys are the Go version's (so an existing ``peer-pods-cm`` works unchanged);
``STATE_DIR`` is new.  Providers declare their own settings classes.  ``load``
(from ``cloud_api_adaptor.options``) validates everything once, at start-up, and
every error names the key at fault.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cloud_api_adaptor.errors import ConfigError
from cloud_api_adaptor.options import (
    boolean,
    custom,
    duration,
    integer,
    key_values,
    nested,
    optional_path,
    options_of,
    parse_list,
    path,
    settings,
    text,
    text_list,
)
from cloud_api_adaptor.wire import FORWARDER_PORT, VXLAN_MIN_ID, VXLAN_PORT

DEFAULT_SOCKET = "/run/peerpod/hypervisor.sock"
DEFAULT_PODS_DIR = "/run/peerpod/pods"
DEFAULT_STATE_DIR = "/var/lib/cloud-api-adaptor"
MAX_UNIX_PATH = 107
LOG_LEVELS = ("debug", "info", "warning", "error")


def _tunnel_type(key: str, raw: str) -> str:
    value = raw.strip()
    if value != "vxlan":
        raise ConfigError(key, f'unknown tunnel type: "{value}"')
    return value


def _cidrs(key: str, raw: str) -> tuple[ipaddress.IPv4Network, ...]:
    result = []
    for entry in parse_list(raw):
        try:
            result.append(ipaddress.IPv4Network(entry, strict=False))
        except ValueError as exc:
            raise ConfigError(key, f"invalid IPv4 CIDR {entry!r}: {exc}") from None
    return tuple(result)


@settings
class TlsSettings:
    """Agent-channel TLS configuration (the profile is validated by the transport at start-up)."""

    disabled: bool = boolean(
        "disable-tls", None, "Plain TCP to the forwarder (must match the pod VM).", default=False
    )
    ca_cert_file: str = text(
        "ca-cert-file",
        "CACERT_FILE",
        "CA certificate for the agent channel (default: generated).",
        default="",
    )
    cert_file: str = text(
        "cert-file", "CERT_FILE", "Client certificate for the agent channel (default: generated).", default=""
    )
    cert_key: str = text(
        "cert-key", "CERT_KEY", "Client key for the agent channel (default: generated).", default=""
    )
    skip_verify: bool = boolean(
        "tls-skip-verify", "TLS_SKIP_VERIFY", "Skip verifying the forwarder's certificate.", default=False
    )
    min_version: str = text(
        "tls-min-version", "TLS_MIN_VERSION", "VersionTLS12 or VersionTLS13 (TLS 1.2 floor).", default=""
    )
    cipher_suites: tuple[str, ...] = text_list(
        "tls-cipher-suites",
        "TLS_CIPHER_SUITES",
        "Comma-separated IANA cipher suite names (TLS 1.2).",
        default=(),
    )


@settings
class NetworkSettings:
    """Pod network tunnel settings."""

    tunnel_type: str = custom(
        "tunnel-type",
        "TUNNEL_TYPE",
        "Pod network tunnel type (only vxlan).",
        default="vxlan",
        default_text="vxlan",
        parse=_tunnel_type,
    )
    vxlan_port: int = integer(
        "vxlan-port", "VXLAN_PORT", "VXLAN UDP port.", default=VXLAN_PORT, minimum=1, maximum=65535
    )
    vxlan_min_id: int = integer(
        "vxlan-min-id",
        "VXLAN_MIN_ID",
        "First VXLAN VNI to allocate.",
        default=VXLAN_MIN_ID,
        minimum=1,
        maximum=(1 << 24) - 1,
    )
    host_interface: str = text(
        "host-interface", "HOST_INTERFACE", "Worker interface for the tunnel (default: auto).", default=""
    )
    external_net_via_pod_vm: bool = boolean(
        "ext-network-via-podvm",
        "EXTERNAL_NETWORK_VIA_PODVM",
        "Route the pod's external traffic through the pod VM (multi-NIC).",
        default=False,
    )
    pod_subnet_cidrs: tuple[ipaddress.IPv4Network, ...] = custom(
        "pod-subnet-cidrs",
        "POD_SUBNET_CIDRS",
        "Cluster pod subnets kept on the tunnel when external traffic goes via the pod VM.",
        default=(),
        default_text="",
        parse=_cidrs,
        kind="list",
    )


KUBERNETES_API_MODES = ("auto", "on", "off")


@settings
class KubernetesSettings:
    """The daemon's use of the Kubernetes API (cloud_api_adaptor.kube; docs/kubernetes.md).

    Nothing on the sandbox path waits for the API server beyond ``peerpod_create_wait``:
    updates go through a durable outbox and catch up when the API server is back.
    """

    api: str = text(
        "kubernetes-api",
        "KUBERNETES_API",
        "auto (on inside a cluster), on, or off: PeerPod resources, node capacity, pod events.",
        default="auto",
        choices=KUBERNETES_API_MODES,
    )
    kubeconfig: str = text(
        "kubeconfig",
        "KUBECONFIG",
        "Kubeconfig used when not running in a cluster (KUBERNETES_API=on); default ~/.kube/config.",
        default="",
    )
    qps: int = integer(
        "kube-api-qps", "KUBE_API_QPS", "Steady rate of Kubernetes API requests.", default=20, minimum=1
    )
    burst: int = integer(
        "kube-api-burst", "KUBE_API_BURST", "Burst of Kubernetes API requests.", default=40, minimum=1
    )
    peerpod_create_wait: float = duration(
        "peerpod-create-wait",
        "PEERPOD_CREATE_WAIT",
        "How long StartVM waits for its PeerPod before the cloud create while the API server answers.",
        default=5.0,
    )
    limit_per_node: int = integer(
        "peerpods-limit-per-node",
        "PEERPODS_LIMIT_PER_NODE",
        "Pod VMs this node advertises as the extended resource kata.peerpods.io/vm (-1: none).",
        default=10,
        minimum=-1,
    )
    pod_uid: str = text(
        "pod-uid",
        "POD_UID",
        "This daemon pod's UID (downward API): owner of the node capacity it advertises.",
        default="",
    )
    pod_name: str = text(
        "pod-name",
        "POD_NAME",
        "This daemon pod's name (downward API): at shutdown, is its DaemonSet being uninstalled?",
        default="",
    )
    pod_namespace: str = text(
        "pod-namespace", "POD_NAMESPACE", "This daemon pod's namespace (downward API).", default=""
    )


@settings
class Settings:
    """Everything the daemon needs, validated once and passed down."""

    provider: str = text(
        "provider", "CLOUD_PROVIDER", "Cloud provider plugin to use (entry point name).", default="local"
    )
    socket: Path = path(
        "socket",
        "REMOTE_HYPERVISOR_ENDPOINT",
        "Unix socket Kata's shim dials (ttrpc).",
        default=DEFAULT_SOCKET,
        max_bytes=MAX_UNIX_PATH,
    )
    grpc_socket: Path | None = optional_path(
        "grpc-socket",
        "GRPC_ENDPOINT",
        "Optional second unix socket serving the same API over gRPC.",
        max_bytes=MAX_UNIX_PATH,
        default=None,
    )
    fd_keeper_socket: Path | None = optional_path(
        "fd-keeper-socket",
        "FD_KEEPER_SOCKET",
        "Unix socket of caa-fd-keeper, which holds the shim's sockets across daemon crashes (new).",
        max_bytes=MAX_UNIX_PATH,
        default=None,
    )
    pods_dir: Path = path(
        "pods-dir", "PODS_DIR", "Directory for per-sandbox agent sockets.", default=DEFAULT_PODS_DIR
    )
    state_dir: Path = path(
        "state-dir", "STATE_DIR", "Directory for durable sandbox records (new).", default=DEFAULT_STATE_DIR
    )
    forwarder_port: int = integer(
        "forwarder-port",
        "FORWARDER_PORT",
        "TCP port of agent-protocol-forwarder in the pod VM.",
        default=FORWARDER_PORT,
        minimum=1,
        maximum=65535,
    )
    proxy_timeout: float = duration(
        "proxy-timeout",
        "PROXY_TIMEOUT",
        "How long StartVM waits for the pod VM's forwarder.",
        default=300.0,
        positive=True,
    )
    agent_resume_window: float = duration(
        "agent-resume-window",
        "AGENT_RESUME_WINDOW",
        "How long a dropped link to a pod VM is redialled and resumed before the shim's agent "
        "connection is closed (0: no resumable agent channel).",
        default=120.0,
    )
    tls: TlsSettings = nested(default_factory=TlsSettings)
    initdata: str = text(
        "initdata",
        "INITDATA",
        "Default initdata (gzip+base64 TOML) for pods without the annotation.",
        default="",
    )
    enable_scratch_space: bool = boolean(
        "enable-scratch-space", "ENABLE_SCRATCH_SPACE", "Ask the pod VM for scratch space.", default=False
    )
    network: NetworkSettings = nested(default_factory=NetworkSettings)
    probe_port: int = integer(
        "probe-port",
        "PROBE_PORT",
        "Port of the startup probe and metrics on 127.0.0.1 (0: any free port).",
        default=8000,
        minimum=0,
        maximum=65535,
    )
    node_name: str = text(
        "node-name", "NODE_NAME", "Kubernetes node name (owner tag on instances).", default=""
    )
    cluster_id: str = text(
        "cluster-id", "CLUSTER_ID", "Cluster identifier (owner tag on instances).", default=""
    )
    tags: tuple[tuple[str, str], ...] = key_values(
        "tags", "TAGS", "Extra instance tags, k1=v1,k2=v2.", default=()
    )
    orphan_scan_interval: float = duration(
        "orphan-scan-interval",
        "ORPHAN_SCAN_INTERVAL",
        "How often to look for orphaned VMs.",
        default=300.0,
        positive=True,
    )
    orphan_grace_period: float = duration(
        "orphan-grace-period",
        "ORPHAN_GRACE_PERIOD",
        "Minimum age before an orphan is deleted.",
        default=120.0,
    )
    abandoned_sandbox_grace: float = duration(
        "abandoned-sandbox-grace",
        "ABANDONED_SANDBOX_GRACE",
        "How long a running sandbox may be without its shim's agent connection, or have its PeerPod "
        "being deleted by the cluster, before it is stopped (0: never for the connection, at once for "
        "the PeerPod; a deleted pod network namespace stops it at once).",
        default=60.0,
    )
    log_level: str = text(
        "log-level", "LOG_LEVEL", "debug, info, warning or error.", default="info", choices=LOG_LEVELS
    )
    kubernetes: KubernetesSettings = nested(default_factory=KubernetesSettings)


#: the daemon's options, for the CLI and the deployment files
DAEMON_OPTIONS = options_of(Settings)
