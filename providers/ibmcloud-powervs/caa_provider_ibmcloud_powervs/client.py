"""A thin typed PowerVS client on ibm-cloud-sdk-core's ``BaseService`` (no Python SDK exists).

Only the calls the provider makes, under
``/pcloud/v1/cloud-instances/<workspace>/...``: every request carries the IAM
bearer token (the SDK authenticator) and the workspace CRN in the ``CRN`` header,
``crn:v1:bluemix:public:power-iaas:<zone>:a/<account>:<workspace>::``.  The
account comes from the IAM token's ``account.bss`` claim, so no extra identity
call is needed.  Calls run off the event loop; errors are translated at this
edge (``caa_provider_ibmcloud.errors``).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from caa_provider_ibmcloud.calls import SdkCalls
from caa_provider_ibmcloud.platform import PlatformPort

from cloud_api_adaptor.errors import PermanentProviderError

Shape = dict[str, Any]


def _service_class() -> type[Any]:
    from ibm_cloud_sdk_core import BaseService

    class PowerVsService(BaseService):  # type: ignore[misc]
        """``BaseService`` bound to one workspace; adds the CRN header to every request."""

        DEFAULT_SERVICE_NAME = "power-iaas"

        def __init__(self, authenticator: Any, url: str) -> None:
            super().__init__(service_url=url, authenticator=authenticator)

    return PowerVsService


class PowerVsClient:
    """pvm-instances, DHCP servers and the workspace of one PowerVS workspace."""

    def __init__(self, authenticator: Any, url: str, zone: str, workspace: str, calls: SdkCalls) -> None:
        self._authenticator = authenticator
        self._service = _service_class()(authenticator, url)
        self._zone = zone
        self._workspace = workspace
        self._calls = calls
        self._crn = ""
        self._crn_lock = threading.Lock()

    def workspace_crn(self) -> str:
        """The workspace CRN (blocking: may fetch an IAM token to learn the account)."""
        with self._crn_lock:
            if not self._crn:
                import jwt

                token = self._authenticator.token_manager.get_token()
                claims = jwt.decode(token, options={"verify_signature": False})
                account = str((claims.get("account") or {}).get("bss", ""))
                if not account:
                    raise PermanentProviderError("the IAM token names no account (claim account.bss)")
                self._crn = f"crn:v1:bluemix:public:power-iaas:{self._zone}:a/{account}:{self._workspace}::"
            return self._crn

    def _send(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        url = f"/pcloud/v1/cloud-instances/{self._workspace}{path}"
        headers = {"CRN": self.workspace_crn(), "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = self._service.prepare_request(method, url, headers=headers, data=body)
        return self._service.send(request).get_result()

    async def _call(
        self, operation: str, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> Any:
        return await self._calls.call(
            f"powervs {operation}", functools.partial(self._send, method, path, body)
        )

    async def list_instances(self) -> list[Shape]:
        answer = await self._call("list instances", "GET", "/pvm-instances")
        return [dict(i) for i in (answer or {}).get("pvmInstances", [])]

    async def create_instance(self, body: Mapping[str, Any]) -> list[Shape]:
        answer = await self._call("create instance", "POST", "/pvm-instances", body)
        return [dict(i) for i in answer] if isinstance(answer, list) else [dict(answer or {})]

    async def get_instance(self, instance_id: str) -> Shape:
        return dict(await self._call("get instance", "GET", f"/pvm-instances/{instance_id}") or {})

    async def delete_instance(self, instance_id: str) -> None:
        await self._call("delete instance", "DELETE", f"/pvm-instances/{instance_id}")

    async def list_dhcp_servers(self) -> list[Shape]:
        return [dict(d) for d in await self._call("list dhcp servers", "GET", "/services/dhcp") or []]

    async def get_dhcp_server(self, dhcp_id: str) -> Shape:
        return dict(await self._call("get dhcp server", "GET", f"/services/dhcp/{dhcp_id}") or {})

    async def get_workspace(self) -> Shape:
        return dict(await self._call("get workspace", "GET", "") or {})

    async def get_image(self, image_id: str) -> Shape:
        return dict(await self._call("get image", "GET", f"/images/{image_id}") or {})

    async def get_network(self, network_id: str) -> Shape:
        return dict(await self._call("get network", "GET", f"/networks/{network_id}") or {})

    async def get_ssh_key(self, name: str) -> Shape:
        # SSH keys live in the workspace's tenant; this path is the keys endpoint for the workspace
        return dict(await self._call("get ssh key", "GET", f"/sshkeys/{name}") or {})


@dataclass
class PowervsPorts:
    """The clients one PowerVS provider uses: the PowerVS API, Global Search, and their thread pool."""

    client: PowerVsClient
    platform: PlatformPort
    calls: SdkCalls | None = None

    async def aclose(self) -> None:
        if self.calls is not None:
            await self.calls.aclose()
