"""The provider plugin contract: a small async ABC and frozen dataclasses.

A provider creates and deletes one confidential VM per pod sandbox.  It is found
through the entry-point group ``cloud_api_adaptor.providers``; the entry point
names a ``ProviderPlugin`` object (its settings class, whose fields declare its
options, and a factory that builds the provider from loaded settings).

Contract every provider keeps (checked by ``cloud_api_adaptor.testing.contract``):
- ``create_instance`` is idempotent for a given ``CreateRequest.token``: a retry
  after a lost response or a crash returns the same instance, never a second one.
- ``delete_instance`` is idempotent: an instance that is already gone counts as
  deleted (no error).
- ``list_instances`` returns every instance carrying all the given owner tags,
  so the daemon can find and remove orphans.
- Errors are ``TemporaryProviderError`` (retry may help), ``PermanentProviderError``
  (it won't) or ``InvalidInput``; foreign exceptions never escape.
- Blocking SDK calls run off the event loop (``asyncio.to_thread``).
"""

from __future__ import annotations

import ipaddress
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

from cloud_api_adaptor.wire import FORWARDER_PORT

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ConfigT = TypeVar("ConfigT")

# Owner tag keys stamped on every instance (plus the user's TAGS).
TAG_CLUSTER = "caa.confidentialcontainers.org/cluster"
TAG_NODE = "caa.confidentialcontainers.org/node"
TAG_SANDBOX = "caa.confidentialcontainers.org/sandbox"


@dataclass(frozen=True)
class InstanceSpec:
    """What the pod asked for, after instance-type selection."""

    instance_type: str = ""
    vcpus: int = 0
    memory_mib: int = 0
    gpus: int = 0
    image: str = ""


@dataclass(frozen=True)
class CreateRequest:
    """Everything a provider needs to create one pod VM.

    ``token`` is stable for the sandbox across retries and daemon restarts; a
    provider passes it to the cloud as its idempotency key (EC2 ``ClientToken``,
    libvirt domain name/UUID, ...).
    """

    name: str
    sandbox_id: str
    token: str
    spec: InstanceSpec
    userdata: str
    tags: Mapping[str, str] = field(default_factory=dict)
    #: ``time.monotonic()`` by which the caller wants the instance (the sooner of the StartVM
    #: deadline and PROXY_TIMEOUT); a provider that waits for the VM (its IP) waits no longer.
    #: None: no bound from the caller.
    deadline: float | None = None


@dataclass(frozen=True)
class Instance:
    """A VM as the cloud reports it.  ``ips[0]`` is what the daemon dials."""

    id: str
    name: str
    ips: tuple[IPAddress, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    created_at: float | None = None  # seconds since the epoch, when the cloud says


@dataclass(frozen=True)
class InstanceTypeInfo:
    """One entry of a provider's instance-type catalogue (for best-fit selection)."""

    name: str
    vcpus: int
    memory_mib: int
    gpus: int = 0


@dataclass(frozen=True)
class CheckResult:
    """One line of ``cloud-api-adaptor doctor``."""

    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class ProviderContext:
    """Facts about the node the provider may need; built once by the composition root."""

    node_name: str
    cluster_id: str
    state_dir: Path
    #: a directory of the provider's own that survives daemon restarts
    work_dir: Path
    #: the TCP port the daemon dials on the pod VM (FORWARDER_PORT)
    forwarder_port: int = FORWARDER_PORT


class Provider(ABC):
    """A cloud that can run pod VMs."""

    #: longest instance name the cloud accepts (GenerateInstanceName's max)
    max_name_length: int = 63
    #: largest userdata (bytes, as passed to ``create_instance``) the cloud accepts, or None
    userdata_limit: int | None = None
    #: the default instance type and the allowlist (empty: only the default)
    default_instance_type: str = ""
    instance_types: tuple[str, ...] = ()
    #: default image when the pod does not name one
    default_image: str = ""

    @abstractmethod
    async def create_instance(self, request: CreateRequest) -> Instance:
        """Create (or return the existing) instance for ``request.token``."""

    @abstractmethod
    async def delete_instance(self, instance_id: str) -> None:
        """Delete the instance and everything created for it; gone counts as deleted."""

    @abstractmethod
    async def list_instances(self, owner_tags: Mapping[str, str]) -> Sequence[Instance]:
        """Instances carrying every one of ``owner_tags``."""

    @abstractmethod
    async def verify(self) -> Sequence[CheckResult]:
        """Check the configuration against the real cloud (``doctor``)."""

    async def describe_instance_types(self) -> Sequence[InstanceTypeInfo]:
        """The catalogue for best-fit selection; empty means 'use the default type'."""
        return ()

    async def check_spec(self, spec: InstanceSpec) -> None:  # noqa: B027 - optional hook
        """Refuse, at CreateVM, a spec this provider could never create (``InvalidInput`` naming the field).

        Called before anything is recorded; it may consult what the provider read at
        start-up (its catalogue) but should make no cloud call.  Default: accept.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release SDK clients and background resources."""


@runtime_checkable
class TunnelEndpointProvider(Protocol):
    """Optional capability: the provider owns the worker's end of the pod network tunnel.

    A cloud VM reaches the worker node over the node's own network, so the
    daemon uses the node's primary (or ``HOST_INTERFACE``) address.  A provider
    whose VMs live on a network of its own (the local provider's veth subnet)
    implements this instead, so the tunnel never touches the machine's real
    interfaces.  ``None`` means the provider's VMs cannot carry a tunnel at all.
    Checked with ``isinstance``.
    """

    def tunnel_endpoint(self) -> IPAddress | None:
        """The worker-side tunnel address the pod VMs reach, stable for the provider's lifetime."""
        ...


@runtime_checkable
class ProviderPlugin(Protocol[ConfigT]):
    """What the entry point names: the provider's settings class and its factory.

    ``settings_class`` is an ``@settings`` dataclass (``cloud_api_adaptor.options``):
    its fields declare the provider's flags and environment keys, and the CLI
    loads it from argv and the environment before calling ``build``.
    """

    name: str
    settings_class: type[ConfigT]

    def build(self, config: ConfigT, context: ProviderContext) -> Provider:
        """Build the provider from validated settings (cross-checks raise ``ConfigError`` naming the key)."""
        ...
