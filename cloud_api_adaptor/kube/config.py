"""Which API server to talk to: in-cluster first, then a kubeconfig file.

``KUBERNETES_API=auto`` (the default) talks to the cluster only from inside one (a
service-account token is mounted), so a developer machine with a kubeconfig, the demo
and the tests never reach a cluster by accident; ``on`` insists (in-cluster, else the
``KUBECONFIG`` file, else ~/.kube/config) and fails at start-up naming the problem.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from cloud_api_adaptor.errors import ConfigError
from cloud_api_adaptor.settings import KubernetesSettings

if TYPE_CHECKING:
    from lightkube.config.kubeconfig import KubeConfig

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and SERVICE_ACCOUNT_TOKEN.is_file()


def wanted(settings: KubernetesSettings) -> bool:
    """Whether the daemon uses the Kubernetes API at all."""
    if settings.api == "off":
        return False
    return settings.api == "on" or in_cluster()


def load_config(settings: KubernetesSettings) -> KubeConfig:
    """The client configuration; ConfigError naming KUBERNETES_API/KUBECONFIG when there is none."""
    from lightkube.config.kubeconfig import KubeConfig

    if in_cluster():
        try:
            return KubeConfig.from_service_account()
        except Exception as exc:
            raise ConfigError("KUBERNETES_API", f"in-cluster configuration is unusable: {exc}") from exc
    path = Path(settings.kubeconfig or os.path.expanduser("~/.kube/config"))
    try:
        return KubeConfig.from_file(path)
    except Exception as exc:
        raise ConfigError("KUBECONFIG", f"cannot load kubeconfig {path}: {exc}") from exc
