"""``cloud-api-adaptor plan``: what CreateVM would decide, without creating anything.

It calls CreateVM's pure planning functions directly, with the configured
provider's facts (limits, catalogue, defaults), so its answer or its error is
exactly what Kata would get.  Nothing is written: TLS material for the VM's
apf.json (which sizes the userdata) is made in memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cloud_api_adaptor.daemon import provider_context
from cloud_api_adaptor.errors import AdaptorError, InvalidInput
from cloud_api_adaptor.hypervisor.planning import PlanTarget, plan_sandbox, record_spec
from cloud_api_adaptor.hypervisor.status_map import to_status
from cloud_api_adaptor.plugins import load_plugin
from cloud_api_adaptor.proxy.tls import AgentTls
from cloud_api_adaptor.settings import Settings


async def plan(
    settings: Settings, provider_config: Any, sandbox_id: str, annotations: Mapping[str, str]
) -> tuple[dict[str, Any], bool]:
    provider = load_plugin(settings.provider).build(provider_config, provider_context(settings))
    try:
        target = PlanTarget.of(settings, provider, tuple(await provider.describe_instance_types()))
        tls = AgentTls.from_settings(settings.tls, state_dir=None)
        try:
            record = plan_sandbox(sandbox_id, annotations, target, tls_fields=tls.apf_tls_fields)
            await provider.check_spec(record_spec(record))
        except AdaptorError as exc:
            code, message = to_status(exc)
            error: dict[str, Any] = {"code": code.name, "message": message}
            if isinstance(exc, InvalidInput):
                error["field"] = exc.field
            return {"error": error}, False
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
            "agent_socket_path": record.agent_socket_path,
        }, True
    finally:
        await provider.aclose()
