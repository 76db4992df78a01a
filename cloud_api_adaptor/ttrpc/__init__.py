"""ttrpc (containerd's lightweight RPC over unix sockets), implemented on asyncio.

Layers, each knowing only the one below: ``framing`` (10-byte headers, sans-I/O)
-> ``messages`` (Request/Response envelopes, metadata, status) -> ``connection``
(an ``asyncio.Protocol`` per byte stream) -> ``server`` / ``client``.
"""

from cloud_api_adaptor.ttrpc.client import Client
from cloud_api_adaptor.ttrpc.messages import Metadata
from cloud_api_adaptor.ttrpc.server import CallContext, Server, UnaryMethod
from cloud_api_adaptor.ttrpc.status import Code, RpcError

__all__ = ["CallContext", "Client", "Code", "Metadata", "RpcError", "Server", "UnaryMethod"]
