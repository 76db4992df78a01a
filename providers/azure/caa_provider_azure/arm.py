"""The Azure Resource Manager port: the calls the provider makes, on the SDKs' async clients.

``AzureArm`` is the only module that talks to azure-mgmt-compute, azure-mgmt-network
and azure-identity.  Each call translates SDK exceptions at the edge
(``errors.translate``) and returns plain views (``VmView``, ``NicView``), so nothing
above it sees an SDK type.  The SDKs' own retries are off (``retry_total=0``):
every retry goes through the provider's one policy.  Long-running operations are
polled as the SDK does (``Azure-AsyncOperation``/``Location`` and ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from caa_provider_azure.config import AzureConfig
from caa_provider_azure.errors import translate
from cloud_api_adaptor.errors import TemporaryProviderError

T = TypeVar("T")
Json = dict[str, Any]

#: Microsoft Entra authority hosts that MSAL's instance discovery knows
KNOWN_AUTHORITIES = ("login.microsoftonline.com", "login.microsoftonline.us", "login.chinacloudapi.cn")


@dataclass(frozen=True)
class VmView:
    """What the provider needs of a virtual machine."""

    id: str
    name: str
    tags: Mapping[str, str]
    state: str = ""
    nic_ids: tuple[str, ...] = ()
    created_at: float | None = None
    size: str = ""


@dataclass(frozen=True)
class NicView:
    private_ips: tuple[str, ...] = ()
    public_ip_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class SkuView:
    """A resource SKU (VM size) as the region offers it to this subscription."""

    name: str
    family: str = ""
    vcpus: int = 0
    memory_mib: int = 0
    gpus: int = 0
    confidential: str = ""  # "SNP", "TDX" or ""
    restricted: bool = False
    capabilities: Mapping[str, str] = field(default_factory=dict)


class SharedSession:
    """One aiohttp session (one connection pool, one TLS context) under every client and the credential.

    azure-core's own ``connection_verify=<path>`` builds a new SSL context per request,
    which aiohttp's pool cannot match, so every call would pay a TLS handshake; a
    session whose connector holds the one context keeps connections alive instead.
    Built inside the running loop (aiohttp requires it).
    """

    def __init__(self, config: AzureConfig) -> None:
        import ssl

        import aiohttp

        context = ssl.create_default_context(cafile=config.ca_bundle or None)
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=256))

    def transport(self) -> Any:
        """A transport for one client over the shared session (closing it leaves the session open)."""
        from azure.core.pipeline.transport import AioHttpTransport

        return AioHttpTransport(session=self.session, session_owner=False)

    async def aclose(self) -> None:
        await self.session.close()


def make_credential(config: AzureConfig, transport: Any = None) -> Any:
    """azure-identity's standard credentials: client secret, else workload identity, else managed identity."""
    from azure.identity.aio import (
        ClientSecretCredential,
        ManagedIdentityCredential,
        WorkloadIdentityCredential,
    )

    options: dict[str, Any] = {"transport": transport} if transport is not None else {}
    if config.authority_host:
        options["authority"] = config.authority_host
        host = config.authority_host.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
        if host not in KNOWN_AUTHORITIES:
            # MSAL would first ask the public cloud which authorities exist
            options["disable_instance_discovery"] = True
    if config.client_secret:
        return ClientSecretCredential(config.tenant_id, config.client_id, config.client_secret, **options)
    if config.federated_token_file:
        return WorkloadIdentityCredential(
            tenant_id=config.tenant_id or None,
            client_id=config.client_id or None,
            token_file_path=config.federated_token_file,
            **options,
        )
    return ManagedIdentityCredential(client_id=config.client_id or None, transport=transport)


def _created_at(value: Any) -> float | None:
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    return None


def _vm_view(vm: Any) -> VmView:
    props = getattr(vm, "properties", None)
    network = getattr(props, "network_profile", None)
    nics = tuple(str(n.id) for n in (getattr(network, "network_interfaces", None) or []) if n.id)
    hardware = getattr(props, "hardware_profile", None)
    return VmView(
        id=str(vm.id or ""),
        name=str(vm.name or ""),
        tags=dict(vm.tags or {}),
        state=str(getattr(props, "provisioning_state", "") or ""),
        nic_ids=nics,
        created_at=_created_at(getattr(props, "time_created", None)),
        size=str(getattr(hardware, "vm_size", "") or ""),
    )


def _sku_view(sku: Any) -> SkuView:
    caps = {str(c.name): str(c.value) for c in (sku.capabilities or [])}

    def number(name: str) -> float:
        try:
            return float(caps.get(name, "0"))
        except ValueError:
            return 0.0

    restricted = any(
        str(getattr(r, "reason_code", "")) == "NotAvailableForSubscription" for r in (sku.restrictions or [])
    )
    return SkuView(
        name=str(sku.name),
        family=str(sku.family or ""),
        vcpus=int(number("vCPUs")),
        memory_mib=int(number("MemoryGB") * 1024),
        gpus=int(number("GPUs")),
        confidential=caps.get("ConfidentialComputingType", ""),
        restricted=restricted,
        capabilities=caps,
    )


class AzureArm:
    """Async ARM clients for one subscription and resource group."""

    def __init__(self, config: AzureConfig) -> None:
        from azure.mgmt.compute.aio import ComputeManagementClient
        from azure.mgmt.network.aio import NetworkManagementClient

        self._config = config
        self._shared = SharedSession(config)
        credential = make_credential(config, self._shared.transport())
        self._credential = credential
        endpoint = config.resource_manager_endpoint.rstrip("/")
        self._endpoint = endpoint
        options: dict[str, Any] = {
            "base_url": endpoint,
            "credential_scopes": [f"{endpoint}/.default"],
            "retry_total": 0,
            "connection_timeout": 30,
            "read_timeout": 120,
        }
        self._compute = ComputeManagementClient(
            credential, config.subscription_id, transport=self._shared.transport(), **options
        )
        self._network = NetworkManagementClient(
            credential, config.subscription_id, transport=self._shared.transport(), **options
        )

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise translate(exc, what) from exc

    # -- virtual machines --------------------------------------------------------------------------------

    async def create_vm(self, name: str, body: Json, timeout: float | None) -> VmView:
        """PUT the VM and poll its operation to the end (at most ``timeout`` seconds)."""
        rg = self._config.resource_group

        async def run() -> VmView:
            poller = await self._compute.virtual_machines.begin_create_or_update(
                rg,
                name,
                body,  # type: ignore[call-overload]  # the wire JSON, as the SDK accepts
            )
            return _vm_view(await poller.result())

        try:
            async with asyncio.timeout(timeout):
                return await self._call(f"creating VM {name}", run)
        except TimeoutError:
            raise TemporaryProviderError(
                f"azure creating VM {name}: not provisioned within the caller's deadline "
                f"({timeout or 0:.1f}s)"
            ) from None

    async def get_vm(self, name: str) -> VmView:
        rg = self._config.resource_group
        return await self._call(
            f"reading VM {name}", lambda: self._vm(self._compute.virtual_machines.get(rg, name))
        )

    @staticmethod
    async def _vm(call: Awaitable[Any]) -> VmView:
        return _vm_view(await call)

    async def delete_vm(self, name: str, timeout: float | None) -> None:
        """DELETE the VM and poll until it is gone (its NIC, disk and public IP go with it)."""
        rg = self._config.resource_group

        async def run() -> None:
            poller = await self._compute.virtual_machines.begin_delete(rg, name)
            await poller.result()

        try:
            async with asyncio.timeout(timeout):
                await self._call(f"deleting VM {name}", run)
        except TimeoutError:
            raise TemporaryProviderError(
                f"azure deleting VM {name}: still deleting after {timeout:.0f}s"
            ) from None

    async def list_vms(self) -> list[VmView]:
        """Every VM in the resource group (ARM cannot filter VM lists by tag)."""
        rg = self._config.resource_group

        async def run() -> list[VmView]:
            return [_vm_view(vm) async for vm in self._compute.virtual_machines.list(rg)]

        return await self._call("listing VMs", run)

    # -- network -----------------------------------------------------------------------------------------

    async def get_nic(self, nic_id: str) -> NicView:
        group, name = _group_and_name(nic_id)

        async def run() -> NicView:
            nic = await self._network.network_interfaces.get(group, name)
            configs = nic.ip_configurations or []
            private = tuple(str(c.private_ip_address) for c in configs if c.private_ip_address)
            public = tuple(str(c.public_ip_address.id) for c in configs if c.public_ip_address)
            return NicView(private, public)

        return await self._call(f"reading NIC {name}", run)

    async def get_public_ip(self, ip_id: str) -> str:
        group, name = _group_and_name(ip_id)

        async def run() -> str:
            address = await self._network.public_ip_addresses.get(group, name)
            return str(address.ip_address or "")

        return await self._call(f"reading public IP {name}", run)

    async def get_subnet(self, subnet_id: str) -> str:
        parts = subnet_id.strip("/").split("/")
        group, vnet, name = parts[3], parts[7], parts[9]

        async def run() -> str:
            subnet = await self._network.subnets.get(group, vnet, name)
            return str(subnet.address_prefix or ", ".join(subnet.address_prefixes or []))

        return await self._call(f"reading subnet {name}", run)

    async def get_nsg(self, nsg_id: str) -> str:
        group, name = _group_and_name(nsg_id)

        async def run() -> str:
            nsg = await self._network.network_security_groups.get(group, name)
            return str(nsg.location or "")

        return await self._call(f"reading network security group {name}", run)

    # -- catalogue, doctor ---------------------------------------------------------------------------------

    async def list_skus(self) -> list[SkuView]:
        """The region's virtual machine SKUs (one paged call)."""
        region = self._config.region

        async def run() -> list[SkuView]:
            found = []
            async for sku in self._compute.resource_skus.list(filter=f"location eq '{region}'"):
                if str(sku.resource_type or "") == "virtualMachines":
                    found.append(_sku_view(sku))
            return found

        return await self._call("listing VM sizes", run)

    async def usage(self) -> list[tuple[str, float, float]]:
        """(quota name, current value, limit) of the region's compute quotas."""
        region = self._config.region

        async def run() -> list[tuple[str, float, float]]:
            return [
                (str(u.name.value), float(u.current_value), float(u.limit))
                async for u in self._compute.usage.list(region)
            ]

        return await self._call("reading compute quotas", run)

    async def get_resource_group(self) -> str:
        """The resource group's location (a plain ARM GET through the compute client's pipeline)."""
        from azure.core.rest import HttpRequest

        url = f"{self._endpoint}{self._config.group_id}?api-version=2021-04-01"

        async def run() -> str:
            response = await self._compute._client.send_request(HttpRequest("GET", url))
            response.raise_for_status()
            return str(response.json().get("location", ""))

        return await self._call(f"reading resource group {self._config.resource_group}", run)

    async def get_image(self, image_id: str) -> Json:
        """A gallery image (or version), or a community gallery image; its location and state."""
        from azure.core.rest import HttpRequest

        if image_id.lower().startswith("/communitygalleries/"):
            parts = image_id.strip("/").split("/")
            location = f"/subscriptions/{self._config.subscription_id}/providers/Microsoft.Compute/locations"
            path = f"{location}/{self._config.region}/{'/'.join(parts)}"
        else:
            path = image_id
        url = f"{self._endpoint}{path}?api-version=2024-03-03"

        async def run() -> Json:
            response = await self._compute._client.send_request(HttpRequest("GET", url))
            response.raise_for_status()
            body = response.json()
            return body if isinstance(body, dict) else {}

        return await self._call("reading the image", run)

    async def aclose(self) -> None:
        for client in (self._compute, self._network, self._credential, self._shared):
            with contextlib.suppress(Exception):
                await (client.aclose() if isinstance(client, SharedSession) else client.close())


def _group_and_name(resource_id: str) -> tuple[str, str]:
    parts = resource_id.strip("/").split("/")
    try:
        return parts[parts.index("resourceGroups") + 1], parts[-1]
    except (ValueError, IndexError):
        return "", parts[-1]


__all__: Sequence[str] = ["AzureArm", "NicView", "SharedSession", "SkuView", "VmView", "make_credential"]
