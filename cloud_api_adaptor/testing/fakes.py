"""In-memory stand-ins for the lifecycle's ports, for tests that exercise other parts."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


class NullAgentProxy:
    """A proxy that is 'up' at once and holds nothing."""

    async def start(self, host: str, port: int, timeout: float) -> None:
        return None

    async def restore(self, host: str, port: int) -> None:
        return None

    async def aclose(self) -> None:
        return None


class NullAgentChannel:
    """An agent channel with no TLS material whose proxies are up at once (the channel is not under test)."""

    def apf_tls_fields(self, instance_name: str) -> Mapping[str, Any]:
        return {}

    def new_proxy(self, socket_path: Path, instance_name: str) -> NullAgentProxy:
        return NullAgentProxy()
