"""The worker side of the agent channel: TLS material, the byte pump, per-sandbox proxies."""

from cloud_api_adaptor.proxy.agent_proxy import SOCKET_NAME, AgentChannel, AgentProxy, ProxyStats
from cloud_api_adaptor.proxy.tls import AgentTls, CertKeyPair, TlsProfile

__all__ = ["SOCKET_NAME", "AgentChannel", "AgentProxy", "AgentTls", "CertKeyPair", "ProxyStats", "TlsProfile"]
