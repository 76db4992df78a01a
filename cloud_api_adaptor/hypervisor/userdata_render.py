"""Builds one sandbox's cloud-config: apf.json (pod, network, TLS) and initdata."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cloud_api_adaptor.apf import ApfConfig
from cloud_api_adaptor.errors import ConfigError, InvalidInput
from cloud_api_adaptor.hypervisor.requests import ANN_INITDATA, PodRequest
from cloud_api_adaptor.initdata import decode_initdata, encode_initdata, parse_initdata
from cloud_api_adaptor.settings import Settings
from cloud_api_adaptor.userdata import build_userdata


def validate_global_initdata(encoded: str) -> None:
    """INITDATA (gzip+base64 TOML) must parse; checked once at start-up."""
    if encoded:
        try:
            parse_initdata(decode_initdata(encoded, field="INITDATA"), field="INITDATA")
        except InvalidInput as exc:
            raise ConfigError("INITDATA", f"failed to parse global initdata: {exc}") from exc


def sandbox_initdata(settings: Settings, pod: PodRequest) -> str:
    """The pod's initdata (annotation, validated) else the node default; gzip+base64."""
    if pod.initdata_toml.strip():
        parse_initdata(pod.initdata_toml.encode(), field=ANN_INITDATA)
        return encode_initdata(pod.initdata_toml)
    return settings.initdata


def render_sandbox_userdata(
    *,
    settings: Settings,
    pod: PodRequest,
    pod_network: Mapping[str, Any] | None,
    tls_fields: Mapping[str, Any],
) -> str:
    apf = ApfConfig.from_mapping(
        {
            "pod-network": dict(pod_network) if pod_network is not None else None,
            "pod-namespace": pod.pod_namespace,
            "pod-name": pod.pod_name,
            **tls_fields,
        }
    )
    return build_userdata(
        apf_json=apf.to_json(),
        initdata=sandbox_initdata(settings, pod),
        auth_json=None,
        scratch_space=settings.enable_scratch_space,
    )
