"""Builds the daemon's agent channel (TLS material + per-sandbox proxies) from settings."""

from __future__ import annotations

from cloud_api_adaptor.proxy.agent_proxy import AgentChannel
from cloud_api_adaptor.proxy.tls import AgentTls
from cloud_api_adaptor.settings import Settings
from cloud_api_adaptor.transport.custody import SocketCustody


def build_agent_channel(settings: Settings, custody: SocketCustody | None = None) -> AgentChannel:
    """TLS material is loaded or created under STATE_DIR, so running VMs keep trusting us after a restart."""
    tls = AgentTls.from_settings(settings.tls, settings.state_dir)
    return AgentChannel(
        tls, dial_timeout=settings.proxy_timeout, resume_window=settings.agent_resume_window, custody=custody
    )
