"""``cloud-api-adaptor doctor`` for GCP: each setting checked against the real project.

Credentials and project, zone, network and subnetwork, image, machine types
(with Confidential VM support for the chosen technology), and quota headroom in
the zone's region for one more pod VM of the default machine type.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from caa_provider_gcp.compute import ComputePort
from caa_provider_gcp.config import GcpConfig, confidential_support_problem, machine_series
from caa_provider_gcp.shapes import USERDATA_LIMIT, machine_type_info
from cloud_api_adaptor.errors import AdaptorError, PermanentProviderError
from cloud_api_adaptor.provider import CheckResult

T = TypeVar("T")
Retried = Callable[[Callable[[], Awaitable[T]]], Awaitable[T]]


async def _check(name: str, run: Callable[[], Awaitable[str]]) -> CheckResult:
    try:
        return CheckResult(name, True, await run())
    except AdaptorError as exc:
        return CheckResult(name, False, str(exc))


async def run_checks(config: GcpConfig, compute: ComputePort, retried: Retried[Any]) -> Sequence[CheckResult]:
    async def credentials() -> str:
        project = await retried(compute.get_project)
        return f"project {project.get('name', config.project_id)} answers"

    async def zone() -> str:
        found = await retried(compute.get_zone)
        if found.get("status") != "UP":
            raise PermanentProviderError(f"zone {config.zone} is {found.get('status')}")
        return f"{config.zone} is UP"

    async def network() -> str:
        found = await retried(lambda: compute.get_network(config.network_url))
        return str(found.get("name", config.network_url))

    async def subnetwork() -> str:
        if not config.subnetwork_url:
            return "none set: the network's subnetwork in the region (auto mode)"
        found = await retried(lambda: compute.get_subnetwork(config.subnetwork_url))
        return f"{found.get('name')} {found.get('ipCidrRange', '')}".strip()

    async def image() -> str:
        url = config.image_url()
        found = await retried(lambda: compute.get_image(url))
        if found.get("status") not in (None, "READY"):
            raise PermanentProviderError(f"image {url} is {found.get('status')}")
        return f"{url} ({found.get('diskSizeGb', '?')} GiB)"

    async def machine_types() -> str:
        described = []
        for name in config.allowed_machine_types:
            info = machine_type_info(await retried(functools.partial(compute.get_machine_type, name)))
            if not config.disable_cvm:
                problem = confidential_support_problem(name, config.confidential_type)
                if problem:
                    raise PermanentProviderError(problem)
            described.append(f"{info.name} ({info.vcpus} vCPUs, {info.memory_mib} MiB)")
        cvm = "no Confidential VM" if config.disable_cvm else f"{config.confidential_type} Confidential VM"
        return f"{', '.join(described)}; {cvm}"

    async def quota() -> str:
        default = machine_type_info(await retried(lambda: compute.get_machine_type(config.machine_type)))
        region = await retried(compute.get_region)
        quotas = {str(q.get("metric")): q for q in region.get("quotas") or []}
        needed = {"CPUS": default.vcpus, f"{machine_series(config.machine_type).upper()}_CPUS": default.vcpus}
        if config.use_public_ip:
            needed["IN_USE_ADDRESSES"] = 1
        lines = []
        for metric, amount in needed.items():
            if metric not in quotas:
                continue
            left = float(quotas[metric].get("limit", 0)) - float(quotas[metric].get("usage", 0))
            if left < amount:
                raise PermanentProviderError(
                    f"quota {metric} in {config.region}: {left:g} left, one pod VM needs {amount}"
                )
            lines.append(f"{metric} {left:g} left")
        return ", ".join(lines) or f"no matching quotas reported for {config.region}"

    checks: list[tuple[str, Callable[[], Awaitable[str]]]] = [
        ("credentials", credentials),
        ("zone", zone),
        ("network", network),
        ("subnetwork", subnetwork),
        ("image", image),
        ("machine types", machine_types),
        ("quota", quota),
    ]
    results = [await _check(name, run) for name, run in checks]
    ip = "external IP (USE_PUBLIC_IP)" if config.use_public_ip else "internal IP only, no external IP"
    results.append(CheckResult("addresses", True, ip))
    results.append(CheckResult("userdata limit", True, f"{USERDATA_LIMIT} bytes (raw, before base64)"))
    return results
