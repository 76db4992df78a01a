"""``cloud-api-adaptor doctor`` for the PowerVS provider."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from caa_provider_ibmcloud.retry import RetryPolicy

from caa_provider_ibmcloud_powervs.client import PowervsPorts
from caa_provider_ibmcloud_powervs.config import PowervsConfig
from caa_provider_ibmcloud_powervs.shapes import USERDATA_BASE64_LIMIT
from cloud_api_adaptor.errors import AdaptorError, PermanentProviderError
from cloud_api_adaptor.provider import CheckResult


async def _checked(name: str, run: Callable[[], Awaitable[str]]) -> CheckResult:
    try:
        return CheckResult(name, True, await run())
    except AdaptorError as exc:
        return CheckResult(name, False, str(exc))


async def run_checks(
    config: PowervsConfig, port: Callable[[], PowervsPorts], retry: RetryPolicy
) -> Sequence[CheckResult]:
    try:
        client = port().client
    except AdaptorError as exc:
        return [CheckResult("credentials", False, str(exc))]

    async def workspace() -> str:
        raw = await retry.run(client.get_workspace)
        if raw.get("region") and raw["region"] != config.zone:
            raise PermanentProviderError(f"workspace is in {raw['region']}, not POWERVS_ZONE {config.zone}")
        return f"{config.service_instance_id} in {config.zone} (credentials and CRN accepted)"

    async def network() -> str:
        raw = await retry.run(lambda: client.get_network(config.network_id))
        return f"{config.network_id} ({raw.get('name', '?')}, {raw.get('type', '?')})"

    async def image() -> str:
        raw = await retry.run(lambda: client.get_image(config.image_id))
        arch = str((raw.get("specifications") or {}).get("architecture", ""))
        if arch and arch != "ppc64":
            raise PermanentProviderError(f"image {config.image_id} is {arch}, not ppc64")
        return f"{config.image_id} ({raw.get('name', '?')}, {raw.get('state', '?')})"

    async def quota() -> str:
        raw = await retry.run(client.get_workspace)
        limits, usage = raw.get("limits") or {}, raw.get("usage") or {}
        lines = []
        for key, need in (("instances", 1.0), ("processors", config.processors), ("memory", config.memory)):
            if key in limits:
                left = float(limits[key]) - float(usage.get(key, 0))
                if left < need:
                    raise PermanentProviderError(f"{key}: {left:g} left, a pod VM needs {need:g}")
                lines.append(f"{key} {left:g} left")
        return ", ".join(lines) or "the workspace reports no limits"

    checks: list[tuple[str, Callable[[], Awaitable[str]]]] = [
        ("workspace", workspace),
        ("network", network),
        ("image", image),
        ("quota", quota),
    ]
    results = [await _checked(name, fn) for name, fn in checks]
    results.append(CheckResult("userdata limit", True, f"{USERDATA_BASE64_LIMIT} bytes of base64"))
    return results
