"""``cloud-api-adaptor controller`` settings; the provider's own come from its plugin, as for the daemon."""

from __future__ import annotations

from cloud_api_adaptor.options import boolean, duration, integer, settings, text

LOG_LEVELS = ("debug", "info", "warning", "error")
#: the Go peerpod-ctrl's leader-election ID, so an old and a new controller never both work
DEFAULT_LEASE = "33f6c5d6.confidentialcontainers.org"


@settings
class ControllerSettings:
    provider: str = text("provider", "CLOUD_PROVIDER", "Cloud provider of the pod VMs.", default="")
    cluster_id: str = text(
        "cluster-id",
        "CLUSTER_ID",
        "Cluster identifier (owner tag on instances), as the daemon's.",
        default="",
    )
    namespace: str = text(
        "namespace",
        "PEERPODS_NAMESPACE",
        "Namespace of the leader-election Lease (the controller's own).",
        default="confidential-containers-system",
    )
    identity: str = text(
        "identity", "POD_NAME", "This replica's name in the Lease (default: the host name).", default=""
    )
    reconcile_period: float = duration(
        "reconcile-period",
        "CONTROLLER_RECONCILE_PERIOD",
        "How often every PeerPod is checked.",
        default=30.0,
        positive=True,
    )
    watch: bool = boolean(
        "watch",
        "CONTROLLER_WATCH",
        "Also watch PeerPods and Nodes, to act on a deletion at once instead of at the next period.",
        default=True,
    )
    orphan_scan: bool = boolean(
        "orphan-scan",
        "CONTROLLER_ORPHAN_SCAN",
        "Delete the cluster's instances whose node no longer exists.",
        default=True,
    )
    orphan_grace_period: float = duration(
        "orphan-grace-period",
        "CONTROLLER_ORPHAN_GRACE_PERIOD",
        "How long an instance's node must have been missing before the instance is deleted.",
        default=600.0,
    )
    leader_elect: bool = boolean(
        "leader-elect", "LEADER_ELECT", "Work only while holding the Lease.", default=True
    )
    lease_name: str = text("lease-name", "LEASE_NAME", "Leader-election Lease.", default=DEFAULT_LEASE)
    lease_duration: float = duration(
        "lease-duration",
        "LEASE_DURATION",
        "How long a Lease not renewed keeps others waiting.",
        default=15.0,
        positive=True,
    )
    renew_deadline: float = duration(
        "renew-deadline",
        "RENEW_DEADLINE",
        "The leader stops working when it could not renew for this long.",
        default=10.0,
        positive=True,
    )
    retry_period: float = duration(
        "retry-period", "RETRY_PERIOD", "How often the Lease is renewed or tried.", default=2.0, positive=True
    )
    kube_qps: int = integer(
        "kube-api-qps", "KUBE_API_QPS", "Steady rate of Kubernetes API requests.", default=20, minimum=1
    )
    kube_burst: int = integer(
        "kube-api-burst", "KUBE_API_BURST", "Burst of Kubernetes API requests.", default=40, minimum=1
    )
    health_port: int = integer(
        "health-port",
        "CONTROLLER_HEALTH_PORT",
        "Plain HTTP port of /healthz, /readyz and /metrics (-1: off, 0: any free port).",
        default=8081,
        minimum=-1,
        maximum=65535,
    )
    health_address: str = text(
        "health-address", "CONTROLLER_HEALTH_ADDRESS", "Address of the health port.", default="0.0.0.0"
    )
    state_dir: str = text(
        "state-dir",
        "STATE_DIR",
        "Scratch directory for the provider plugin.",
        default="/tmp/cloud-api-adaptor-controller",
    )
    log_level: str = text(
        "log-level", "LOG_LEVEL", "debug, info, warning or error.", default="info", choices=LOG_LEVELS
    )

    def __post_init__(self) -> None:
        from cloud_api_adaptor.errors import ConfigError

        if self.renew_deadline >= self.lease_duration:
            raise ConfigError("RENEW_DEADLINE", "must be shorter than LEASE_DURATION")
        if self.retry_period >= self.renew_deadline:
            raise ConfigError("RETRY_PERIOD", "must be shorter than RENEW_DEADLINE")
