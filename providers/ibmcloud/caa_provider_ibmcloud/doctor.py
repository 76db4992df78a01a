"""``cloud-api-adaptor doctor`` for the VPC provider: one check per thing that can be misconfigured."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from caa_provider_ibmcloud.config import IbmcloudConfig
from caa_provider_ibmcloud.ibmports import Ports
from caa_provider_ibmcloud.retry import RetryPolicy
from caa_provider_ibmcloud.shapes import USERDATA_LIMIT, ProfileSpec
from caa_provider_ibmcloud.tags import search_query
from cloud_api_adaptor.errors import AdaptorError, PermanentProviderError
from cloud_api_adaptor.provider import TAG_CLUSTER, CheckResult


async def _checked(name: str, run: Callable[[], Awaitable[str]]) -> CheckResult:
    try:
        return CheckResult(name, True, await run())
    except AdaptorError as exc:
        return CheckResult(name, False, str(exc))


async def run_checks(
    config: IbmcloudConfig,
    port: Callable[[], Ports],
    retry: RetryPolicy,
    profile_for: Callable[[str], Awaitable[ProfileSpec]],
    arch_of: Callable[[str], Awaitable[str]],
) -> Sequence[CheckResult]:
    try:
        ports = port()
    except AdaptorError as exc:
        return [CheckResult("credentials", False, str(exc))]
    vpc = ports.vpc

    async def credentials() -> str:
        # a search needs an IAM token: a bad API key or trusted profile fails here first
        await retry.run(
            lambda: ports.platform.search(search_query({TAG_CLUSTER: "doctor"}, ("instance",), "is"))
        )
        return f"IAM token accepted (VPC API {config.vpc_url})"

    async def zone() -> str:
        if not config.zone_name:
            raise PermanentProviderError("IBMCLOUD_ZONE is not set")
        raw = await retry.run(lambda: vpc.get_zone(config.region, config.zone_name))
        return f"{config.zone_name} in {config.region} ({raw.get('status', '?')})"

    async def network() -> str:
        if not config.primary_subnet_id:
            raise PermanentProviderError("IBMCLOUD_VPC_SUBNET_ID is not set")
        subnet = await retry.run(lambda: vpc.get_subnet(config.primary_subnet_id))
        subnet_vpc = str((subnet.get("vpc") or {}).get("id", ""))
        if config.vpc_id and subnet_vpc != config.vpc_id:
            raise PermanentProviderError(f"subnet {subnet['id']} is in VPC {subnet_vpc}, not {config.vpc_id}")
        subnet_zone = str((subnet.get("zone") or {}).get("name", ""))
        if config.zone_name and subnet_zone != config.zone_name:
            raise PermanentProviderError(
                f"subnet {subnet['id']} is in zone {subnet_zone}, not {config.zone_name}"
            )
        if config.vpc_id:
            await retry.run(lambda: vpc.get_vpc(config.vpc_id))
        for group in config.security_group_ids:
            await retry.run(lambda g=group: vpc.get_security_group(g))  # type: ignore[misc]
        groups = (
            f", security groups {', '.join(config.security_group_ids)}" if config.security_group_ids else ""
        )
        return f"subnet {subnet['id']} ({subnet.get('ipv4_cidr_block', '?')}) in VPC {subnet_vpc}{groups}"

    async def images() -> str:
        return ", ".join([f"{image} ({await arch_of(image) or 'unknown'})" for image in config.image_id])

    async def profiles() -> str:
        if not config.allowed_profiles:
            raise PermanentProviderError("no profile: set IBMCLOUD_PODVM_INSTANCE_PROFILE_NAME")
        archs = {await arch_of(i) for i in config.image_id}
        lines = []
        for name in config.allowed_profiles:
            spec = await profile_for(name)
            if spec.architecture not in archs:
                raise PermanentProviderError(
                    f"profile {name} is {spec.architecture}; no image of that architecture"
                )
            if (
                not config.disable_cvm
                and spec.architecture == "amd64"
                and "tdx" not in spec.confidential_modes
            ):
                raise PermanentProviderError(f"profile {name} does not support TDX (DISABLECVM is false)")
            lines.append(f"{name} ({spec.architecture}, {spec.vcpus} vCPU, {spec.memory_mib // 1024} GiB)")
        return ", ".join(lines)

    async def ssh_key() -> str:
        key = await retry.run(lambda: vpc.get_key(config.key_id))
        return f"{config.key_id} ({key.get('name', '?')})"

    checks: list[tuple[str, Callable[[], Awaitable[str]]]] = [
        ("credentials", credentials),
        ("zone", zone),
        ("network", network),
        ("images", images),
        ("profiles", profiles),
    ]
    if config.key_id:
        checks.append(("ssh key", ssh_key))
    results = [await _checked(name, fn) for name, fn in checks]
    results.append(CheckResult("quota", True, "the VPC API exposes no quota; not checked"))
    results.append(CheckResult("userdata limit", True, f"{USERDATA_LIMIT} bytes (plain text)"))
    return results
