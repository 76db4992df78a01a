"""``cloud-api-adaptor webhook`` settings: the Go webhook's keys plus where its certificate lives."""

from __future__ import annotations

from pathlib import Path

from cloud_api_adaptor.options import integer, path, settings, text, text_list
from cloud_api_adaptor.transport.tls import TlsProfile
from cloud_api_adaptor.webhook.mutation import (
    DEFAULT_EXTENDED_RESOURCE,
    DEFAULT_RUNTIME_CLASS,
    InitContainerRule,
    MutationConfig,
)

LOG_LEVELS = ("debug", "info", "warning", "error")


@settings
class WebhookSettings:
    runtime_class: str = text(
        "target-runtimeclass",
        "TARGET_RUNTIMECLASS",
        "RuntimeClass whose pods are mutated.",
        default=DEFAULT_RUNTIME_CLASS,
    )
    extended_resource: str = text(
        "pod-vm-extended-resource",
        "POD_VM_EXTENDED_RESOURCE",
        "Extended resource one pod VM counts as.",
        default=DEFAULT_EXTENDED_RESOURCE,
    )
    init_containers: str = text(
        "init-containers",
        "WEBHOOK_INIT_CONTAINERS",
        "How init containers size the VM: sum (as the Go webhook) or max (as Kubernetes).",
        default="sum",
        choices=("sum", "max"),
    )
    bind_address: str = text(
        "bind-address", "WEBHOOK_BIND_ADDRESS", "Address the HTTPS server listens on.", default="0.0.0.0"
    )
    port: int = integer(
        "port", "WEBHOOK_PORT", "HTTPS port (0: any free port).", default=9443, minimum=0, maximum=65535
    )
    health_port: int = integer(
        "health-port",
        "WEBHOOK_HEALTH_PORT",
        "Plain HTTP port of /healthz, /readyz and /metrics (-1: off, 0: any free port).",
        default=8081,
        minimum=-1,
        maximum=65535,
    )
    cert_dir: Path = path(
        "cert-dir",
        "WEBHOOK_CERT_DIR",
        "Directory with tls.crt and tls.key (cert-manager's Secret); without them the webhook makes its own.",
        default="/tmp/k8s-webhook-server/serving-certs",
    )
    namespace: str = text(
        "namespace", "POD_NAMESPACE", "Namespace of the webhook's Service and Secret.", default="default"
    )
    service_name: str = text(
        "service-name", "WEBHOOK_SERVICE_NAME", "The webhook's Service.", default="peer-pods-webhook"
    )
    config_name: str = text(
        "webhook-config",
        "WEBHOOK_CONFIG_NAME",
        "MutatingWebhookConfiguration whose caBundle the webhook keeps (own certificate only).",
        default="peer-pods-mutating-webhook",
    )
    cert_secret: str = text(
        "cert-secret",
        "WEBHOOK_CERT_SECRET",
        "Secret holding the webhook's own CA and serving certificate, shared by its replicas.",
        default="peer-pods-webhook-cert",
    )
    cert_hosts: tuple[str, ...] = text_list(
        "cert-hosts",
        "WEBHOOK_CERT_HOSTS",
        "More DNS names or IP addresses for the webhook's own serving certificate.",
        default=(),
    )
    tls_min_version: str = text(
        "tls-min-version",
        "TLS_MIN_VERSION",
        "Lowest TLS version served (VersionTLS12 or VersionTLS13).",
        default="VersionTLS12",
    )
    tls_cipher_suites: tuple[str, ...] = text_list(
        "tls-cipher-suites", "TLS_CIPHER_SUITES", "TLS 1.2 cipher suites served (IANA names).", default=()
    )
    log_level: str = text(
        "log-level", "LOG_LEVEL", "debug, info, warning or error.", default="info", choices=LOG_LEVELS
    )

    def __post_init__(self) -> None:
        self.tls_profile()  # a bad profile is a start-up error naming the key

    def tls_profile(self) -> TlsProfile:
        profile = TlsProfile.parse(self.tls_min_version, self.tls_cipher_suites)
        return profile or TlsProfile()

    @property
    def mutation(self) -> MutationConfig:
        rule: InitContainerRule = "max" if self.init_containers == "max" else "sum"
        return MutationConfig(self.runtime_class, self.extended_resource, rule)
