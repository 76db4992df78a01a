"""``cloud-api-adaptor plan``: what CreateVM would decide, without creating anything.

It runs the real CreateVM code path (validation, instance-type selection,
userdata rendering) against a throw-away state directory, so its answer or its
error is exactly what Kata would get.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cloud_api_adaptor.channel import build_agent_channel
from cloud_api_adaptor.daemon import build_provider
from cloud_api_adaptor.errors import AdaptorError, InvalidInput
from cloud_api_adaptor.hypervisor.ports import NoPodNetwork
from cloud_api_adaptor.hypervisor.requests import agent_socket_path
from cloud_api_adaptor.hypervisor.sandboxes import SandboxManager
from cloud_api_adaptor.hypervisor.status_map import to_status
from cloud_api_adaptor.hypervisor.store import SandboxStore
from cloud_api_adaptor.settings import Settings


async def plan(
    settings: Settings, provider_config: Any, sandbox_id: str, annotations: Mapping[str, str]
) -> tuple[dict[str, Any], bool]:
    provider = build_provider(settings, provider_config)
    with tempfile.TemporaryDirectory(prefix="caa-plan-") as tmp:
        # Nothing may be written outside the scratch directory; the socket path
        # (and its length check) still uses the real PODS_DIR.
        scratch = dataclasses.replace(settings, state_dir=Path(tmp) / "state", pods_dir=Path(tmp) / "pods")
        store = SandboxStore(scratch.state_dir)
        try:
            store.prepare()
            manager = SandboxManager(
                scratch,
                provider,
                store,
                build_agent_channel(scratch),
                NoPodNetwork(),
                tuple(await provider.describe_instance_types()),
            )
            try:
                socket_path = agent_socket_path(str(settings.pods_dir), sandbox_id)
                await manager.create_vm(sandbox_id, annotations, "")
            except AdaptorError as exc:
                code, message = to_status(exc)
                error: dict[str, Any] = {"code": code.name, "message": message}
                if isinstance(exc, InvalidInput):
                    error["field"] = exc.field
                return {"error": error}, False
            record = manager.records()[0]
            return {
                "provider": settings.provider,
                "instance_name": record.instance_name,
                "instance_type": record.instance_type,
                "image": record.image,
                "vcpus": record.vcpus,
                "memory_mib": record.memory_mib,
                "gpus": record.gpus,
                "userdata_bytes": len(record.userdata.encode()),
                "userdata_limit": provider.userdata_limit,
                "agent_socket_path": socket_path,
            }, True
        finally:
            store.close()
            await provider.aclose()
