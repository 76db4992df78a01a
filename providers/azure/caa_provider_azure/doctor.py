"""``cloud-api-adaptor doctor`` for Azure: each setting checked against the real subscription.

Credentials (a token and an answer from ARM), the resource group, the image (exists,
in the region), the sizes (offered in the region, CVM capable unless ``DISABLECVM``),
the subnet and NSG, and core quota headroom for one more pod VM of the default size.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from caa_provider_azure.arm import AzureArm, SkuView
from caa_provider_azure.config import AzureConfig
from caa_provider_azure.retry import RetryPolicy
from caa_provider_azure.shapes import USERDATA_LIMIT
from caa_provider_azure.sizes import size_problem
from cloud_api_adaptor.errors import AdaptorError, PermanentProviderError
from cloud_api_adaptor.provider import CheckResult


async def _check(name: str, run: Callable[[], Awaitable[str]]) -> CheckResult:
    try:
        return CheckResult(name, True, await run())
    except AdaptorError as exc:
        return CheckResult(name, False, str(exc))


async def run_checks(config: AzureConfig, arm: AzureArm, retry: RetryPolicy) -> Sequence[CheckResult]:
    skus: dict[str, SkuView] = {}

    async def credentials() -> str:
        location = await retry.run(arm.get_resource_group)
        return f"subscription {config.subscription_id}: resource group {config.resource_group} in {location}"

    async def image() -> str:
        found = await retry.run(lambda: arm.get_image(config.image_id))
        location = str(found.get("location") or "")
        props = found.get("properties") or {}
        regions = [
            str(r.get("name", "")).replace(" ", "").lower()
            for r in (props.get("publishingProfile") or {}).get("targetRegions") or []
        ]
        where = {location.replace(" ", "").lower(), *regions} - {""}
        if where and config.region not in where:
            raise PermanentProviderError(
                f"image {config.image_id} is not in {config.region} (only {sorted(where)})"
            )
        state = props.get("provisioningState")
        if state not in (None, "Succeeded"):
            raise PermanentProviderError(f"image {config.image_id} is {state}")
        return str(config.image_id)

    async def sizes() -> str:
        skus.update({s.name.lower(): s for s in await retry.run(arm.list_skus)})
        described = []
        for size in config.allowed_sizes:
            problem = size_problem(skus, size, config.disable_cvm)
            if problem:
                raise PermanentProviderError(problem)
            sku = skus[size.lower()]
            tee = "" if config.disable_cvm else f", {sku.confidential}"
            described.append(f"{sku.name} ({sku.vcpus} vCPUs, {sku.memory_mib} MiB{tee})")
        return ", ".join(described)

    async def subnet() -> str:
        prefix = await retry.run(lambda: arm.get_subnet(config.subnet_id))
        return f"{config.subnet_id.rsplit('/', 1)[-1]} {prefix}"

    async def nsg() -> str:
        if not config.nsg_id:
            return "none set: the subnet's rules apply"
        location = await retry.run(lambda: arm.get_nsg(config.nsg_id))
        return f"{config.nsg_id.rsplit('/', 1)[-1]} in {location}"

    async def quota() -> str:
        sku = skus.get(config.instance_size.lower())
        if sku is None:
            raise PermanentProviderError(f"size {config.instance_size} unknown in {config.region}")
        usage = {name.lower(): (current, limit) for name, current, limit in await retry.run(arm.usage)}
        lines = []
        for name in ("cores", sku.family):
            if name and name.lower() in usage:
                current, limit = usage[name.lower()]
                if limit - current < sku.vcpus:
                    raise PermanentProviderError(
                        f"quota {name} in {config.region}: {limit - current:g} cores left, "
                        f"one {sku.name} needs {sku.vcpus}"
                    )
                lines.append(f"{name} {limit - current:g} cores left")
        return ", ".join(lines) or f"no matching quotas reported in {config.region}"

    checks: list[tuple[str, Callable[[], Awaitable[str]]]] = [
        ("credentials", credentials),
        ("image", image),
        ("sizes", sizes),
        ("subnet", subnet),
        ("network security group", nsg),
        ("quota", quota),
    ]
    results = [await _check(name, run) for name, run in checks]
    ip = "public IP (USE_PUBLIC_IP)" if config.use_public_ip else "private IP only, no public IP"
    results.append(CheckResult("addresses", True, ip))
    results.append(CheckResult("userdata limit", True, f"{USERDATA_LIMIT} bytes (raw, before base64)"))
    return results
