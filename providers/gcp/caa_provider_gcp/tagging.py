"""``TAGS`` as Resource Manager tag bindings, as the Go version attaches them.

Each ``k=v`` of ``TAGS`` must already exist as a tag key (short name ``k``, under
the project) with a value (short name ``v``); a missing pair aborts the create
with the Go version's text before any instance exists.  After the instance is
created, one binding per pair is made on the zonal Resource Manager endpoint;
a binding that already exists (a retried create) counts as made.

The same ``TAGS`` are also labels on the instance (``labels.py``); bindings are
what organisation policies and IAM conditions see.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from caa_provider_gcp.config import GcpConfig
from caa_provider_gcp.errors import NameInUse, translate
from cloud_api_adaptor.errors import PermanentProviderError

T = TypeVar("T")
CALL_TIMEOUT = 60.0


def missing_tag_text(key: str, value: str) -> str:
    """The Go version's error when a TAGS pair has no Resource Manager tag."""
    return f"Aborting: Tag {key}={value} not found"


class TagPort(Protocol):
    """The Resource Manager calls the GCP provider makes; every error is one of ours."""

    async def resolve(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """``tagValues/<id>`` for each ``(key, value)``; PermanentProviderError naming a missing one."""
        ...

    async def bind(self, instance_numeric_id: str, tag_value: str) -> None: ...

    async def aclose(self) -> None: ...


class ResourceManagerTags:
    """``TagPort`` over google-cloud-resource-manager's REST clients."""

    def __init__(self, config: GcpConfig, credentials: Any, *, max_workers: int = 8) -> None:
        from google.api_core.client_options import ClientOptions
        from google.cloud import resourcemanager_v3

        self._rm = resourcemanager_v3
        self._project = config.project_id
        self._zone = config.zone
        global_endpoint = config.resource_manager_endpoint or "https://cloudresourcemanager.googleapis.com"
        zonal_endpoint = (
            config.resource_manager_endpoint or f"https://{config.zone}-cloudresourcemanager.googleapis.com"
        )

        def client(cls: Any, endpoint: str) -> Any:
            options = ClientOptions(api_endpoint=endpoint)
            return cls(credentials=credentials, transport="rest", client_options=options)

        self._keys = client(resourcemanager_v3.TagKeysClient, global_endpoint)
        self._values = client(resourcemanager_v3.TagValuesClient, global_endpoint)
        self._bindings = client(resourcemanager_v3.TagBindingsClient, zonal_endpoint)
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="gcp-tags")

    async def _call(self, operation: str, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn)
        except Exception as exc:
            raise translate(exc, operation) from exc

    async def resolve(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        parent = f"projects/{self._project}"
        keys: Mapping[str, str] = await self._call(
            "tagKeys.list",
            lambda: {
                k.short_name: k.name
                for k in self._keys.list_tag_keys(parent=parent, retry=None, timeout=CALL_TIMEOUT)
            },
        )
        resolved: dict[tuple[str, str], str] = {}
        values_of: dict[str, Mapping[str, str]] = {}
        for key, value in pairs:
            key_name = keys.get(key)
            if key_name is None:
                raise PermanentProviderError(missing_tag_text(key, value))
            if key_name not in values_of:
                values_of[key_name] = await self._call(
                    "tagValues.list",
                    functools.partial(self._value_names, key_name),
                )
            value_name = values_of[key_name].get(value)
            if value_name is None:
                raise PermanentProviderError(missing_tag_text(key, value))
            resolved[(key, value)] = value_name
        return resolved

    def _value_names(self, key_name: str) -> dict[str, str]:
        values = self._values.list_tag_values(parent=key_name, retry=None, timeout=CALL_TIMEOUT)
        return {v.short_name: v.name for v in values}

    async def bind(self, instance_numeric_id: str, tag_value: str) -> None:
        parent = (
            f"//compute.googleapis.com/projects/{self._project}/zones/{self._zone}"
            f"/instances/{instance_numeric_id}"
        )
        binding = self._rm.TagBinding(parent=parent, tag_value=tag_value)

        def create() -> None:
            operation = self._bindings.create_tag_binding(
                tag_binding=binding, retry=None, timeout=CALL_TIMEOUT
            )
            operation.result(timeout=CALL_TIMEOUT)

        with contextlib.suppress(NameInUse):  # made by an earlier attempt of this create
            await self._call("tagBindings.create", create)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        for client in (self._keys, self._values, self._bindings):
            client.transport.close()
