"""Builds the worker side of the pod network tunnel from settings."""

from __future__ import annotations

from cloud_api_adaptor.hypervisor.ports import NoPodNetwork, PodNetworkPort
from cloud_api_adaptor.settings import Settings


def build_pod_network(settings: Settings) -> PodNetworkPort:
    return NoPodNetwork()
