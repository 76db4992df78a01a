"""An in-memory provider: the cloud is a dict, faults are scripted.

``FakeProvider`` keeps the whole provider contract (idempotent create by token,
idempotent delete, listing by owner tags, userdata limit checked before any
"cloud call") so daemon tests and benchmarks can run without a cloud.  It is
registered as the ``fake`` entry point; benchmarks point every instance at one
shared forwarder with ``FAKE_INSTANCE_IP=127.0.0.1``.

Faults are scripted, not random: ``fail_next_creates(2)`` makes the next two
creates raise, ``lose_next_create_responses(1)`` creates the instance and then
raises (a response lost on the wire), so tests can assert exact outcomes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from cloud_api_adaptor.errors import (
    ConfigError,
    InvalidInput,
    PermanentProviderError,
    ProviderError,
    TemporaryProviderError,
)
from cloud_api_adaptor.options import custom, duration, parse_int, parse_list, settings
from cloud_api_adaptor.provider import (
    CheckResult,
    CreateRequest,
    Instance,
    InstanceTypeInfo,
    IPAddress,
    Provider,
    ProviderContext,
)

logger = logging.getLogger(__name__)

#: addresses handed out when no IP is configured (RFC 2544 benchmark range)
DEFAULT_IP_POOL = ipaddress.IPv4Network("198.18.0.0/15")

CATALOGUE: tuple[InstanceTypeInfo, ...] = (
    InstanceTypeInfo("fake.small", vcpus=1, memory_mib=1024),
    InstanceTypeInfo("fake.medium", vcpus=2, memory_mib=4096),
    InstanceTypeInfo("fake.large", vcpus=4, memory_mib=8192),
    InstanceTypeInfo("fake.gpu", vcpus=8, memory_mib=32768, gpus=1),
)


@dataclass(frozen=True)
class FakeConfig:
    """How the fake cloud behaves."""

    #: seconds each create takes (simulated boot time)
    create_delay: float = 0.0
    #: seconds each delete takes
    delete_delay: float = 0.0
    #: every instance gets this IP (e.g. one shared forwarder on 127.0.0.1)
    fixed_ip: IPAddress | None = None
    #: else instances get the first of these not held by a live instance
    instance_ips: tuple[IPAddress, ...] = ()
    #: largest userdata in bytes (None: no limit)
    userdata_limit: int | None = None
    default_instance_type: str = "fake.medium"
    instance_types: tuple[str, ...] = ()
    default_image: str = "fake-image"


@dataclass(frozen=True)
class Operation:
    """One call the fake cloud saw, and what came of it."""

    kind: str  # create | delete | list | verify
    subject: str  # token for creates, instance id for deletes, "" otherwise
    outcome: str  # created | existing | deleted | absent | listed | fault:<ErrorClass> | lost-response


@dataclass
class _Faults:
    """Scripted faults, consumed one per call."""

    creates: list[ProviderError] = field(default_factory=list)
    deletes: list[ProviderError] = field(default_factory=list)
    lost_create_responses: int = 0


class FakeProvider(Provider):
    """A provider whose cloud is a dict; see the module docstring."""

    max_name_length = 63

    def __init__(self, config: FakeConfig | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config or FakeConfig()
        self.userdata_limit = self.config.userdata_limit
        self.default_instance_type = self.config.default_instance_type
        self.instance_types = self.config.instance_types
        self.default_image = self.config.default_image
        self._clock = clock
        #: live instances by id (what "the cloud" holds)
        self.instances: dict[str, Instance] = {}
        #: every operation in order
        self.operations: list[Operation] = []
        #: number of calls that reached "the cloud" (refused-before-call requests are not counted)
        self.calls = 0
        #: userdata each instance was created with, by id
        self.userdata: dict[str, str] = {}
        self._by_token: dict[str, str] = {}
        self._token_locks: dict[str, asyncio.Lock] = {}
        self._ids = itertools.count(1)
        self._pool: Iterator[IPAddress] = DEFAULT_IP_POOL.hosts()
        self._faults = _Faults()
        #: while True, every call raises TemporaryProviderError (a cloud outage)
        self.outage = False
        self.closed = False

    # -- scripted faults ---------------------------------------------------------------------------------

    def fail_next_creates(
        self,
        count: int = 1,
        *,
        permanent: bool = False,
        message: str = "",
        error: ProviderError | None = None,
    ) -> None:
        """Make the next ``count`` creates raise before creating anything (``error``, if given)."""
        for _ in range(count):
            self._faults.creates.append(error or _fault(permanent, message or "scripted create failure"))

    def fail_next_deletes(self, count: int = 1, *, permanent: bool = False, message: str = "") -> None:
        """Make the next ``count`` deletes raise without deleting."""
        for _ in range(count):
            self._faults.deletes.append(_fault(permanent, message or "scripted delete failure"))

    def lose_next_create_responses(self, count: int = 1) -> None:
        """Make the next ``count`` creates succeed in the cloud, then raise a temporary error."""
        self._faults.lost_create_responses += count

    # -- Provider ----------------------------------------------------------------------------------------

    async def create_instance(self, request: CreateRequest) -> Instance:
        """Create (or return) the instance for ``request.token``; concurrent calls share one create."""
        size = len(request.userdata.encode())
        if self.userdata_limit is not None and size > self.userdata_limit:
            raise InvalidInput(
                "userdata", f"userdata is {size} bytes, above the limit of {self.userdata_limit}"
            )
        lock = self._token_locks.setdefault(request.token, asyncio.Lock())
        async with lock:
            self.calls += 1
            self._check_outage("create", request.token)
            if self._faults.creates:
                error = self._faults.creates.pop(0)
                self._record("create", request.token, f"fault:{type(error).__name__}")
                raise error
            existing = self._by_token.get(request.token)
            if existing is not None and existing in self.instances:
                self._record("create", request.token, "existing")
                return self.instances[existing]
            if self.config.create_delay > 0:
                await asyncio.sleep(self.config.create_delay)
            instance = Instance(
                id=f"fake-{next(self._ids):06d}",
                name=request.name,
                ips=(self._allocate_ip(),),
                tags=dict(request.tags),
                created_at=self._clock(),
            )
            self.instances[instance.id] = instance
            self.userdata[instance.id] = request.userdata
            self._by_token[request.token] = instance.id
            if self._faults.lost_create_responses > 0:
                self._faults.lost_create_responses -= 1
                self._record("create", request.token, "lost-response")
                raise TemporaryProviderError(f"response to create {request.token} lost")
            self._record("create", request.token, "created")
            logger.debug("fake: created %s (%s) for token %s", instance.id, instance.ips[0], request.token)
            return instance

    async def delete_instance(self, instance_id: str) -> None:
        """Remove the instance; an unknown id counts as deleted."""
        self.calls += 1
        self._check_outage("delete", instance_id)
        if self._faults.deletes:
            error = self._faults.deletes.pop(0)
            self._record("delete", instance_id, f"fault:{type(error).__name__}")
            raise error
        if self.config.delete_delay > 0:
            await asyncio.sleep(self.config.delete_delay)
        instance = self.instances.pop(instance_id, None)
        self.userdata.pop(instance_id, None)
        self._record("delete", instance_id, "deleted" if instance else "absent")

    async def list_instances(self, owner_tags: Mapping[str, str]) -> Sequence[Instance]:
        """Live instances carrying every one of ``owner_tags``."""
        self.calls += 1
        self._check_outage("list", "")
        self._record("list", "", "listed")
        return [
            inst
            for inst in self.instances.values()
            if all(inst.tags.get(key) == value for key, value in owner_tags.items())
        ]

    async def verify(self) -> Sequence[CheckResult]:
        self._record("verify", "", "ok")
        return [
            CheckResult("cloud", True, "in-memory fake cloud"),
            CheckResult(
                "userdata limit",
                True,
                "none" if self.userdata_limit is None else f"{self.userdata_limit} bytes",
            ),
        ]

    async def describe_instance_types(self) -> Sequence[InstanceTypeInfo]:
        wanted = set(self.instance_types or (self.default_instance_type,))
        return [info for info in CATALOGUE if info.name in wanted]

    async def aclose(self) -> None:
        self.closed = True

    # -- internals ---------------------------------------------------------------------------------------

    def _check_outage(self, kind: str, subject: str) -> None:
        if self.outage:
            self._record(kind, subject, "fault:outage")
            raise TemporaryProviderError("fake cloud outage")

    def _record(self, kind: str, subject: str, outcome: str) -> None:
        self.operations.append(Operation(kind, subject, outcome))

    def _allocate_ip(self) -> IPAddress:
        if self.config.fixed_ip is not None:
            return self.config.fixed_ip
        if self.config.instance_ips:
            held = {ip for inst in self.instances.values() for ip in inst.ips}
            for ip in self.config.instance_ips:
                if ip not in held:
                    return ip
            raise TemporaryProviderError("fake cloud: every configured instance IP is in use")
        try:
            return next(self._pool)
        except StopIteration:
            raise TemporaryProviderError("fake cloud: address pool exhausted") from None


def _fault(permanent: bool, message: str) -> ProviderError:
    return PermanentProviderError(message) if permanent else TemporaryProviderError(message)


def _parse_ip(key: str, raw: str) -> IPAddress | None:
    if not raw.strip():
        return None
    try:
        return ipaddress.ip_address(raw.strip())
    except ValueError:
        raise ConfigError(key, f"invalid IP address {raw!r}") from None


def _parse_ips(key: str, raw: str) -> tuple[IPAddress, ...]:
    return tuple(ip for ip in (_parse_ip(key, entry) for entry in parse_list(raw)) if ip is not None)


def _parse_limit(key: str, raw: str) -> int | None:
    return parse_int(key, raw, minimum=0) or None


@settings
class FakeSettings:
    """The ``fake`` provider's keys (test and benchmark use)."""

    create_delay: float = duration("fake-create-delay", "FAKE_CREATE_DELAY", "Create delay.", default=0.0)
    delete_delay: float = duration("fake-delete-delay", "FAKE_DELETE_DELAY", "Delete delay.", default=0.0)
    fixed_ip: IPAddress | None = custom(
        "fake-instance-ip",
        "FAKE_INSTANCE_IP",
        "IP every fake instance reports (e.g. 127.0.0.1 for one shared forwarder).",
        default=None,
        default_text="",
        parse=_parse_ip,
    )
    instance_ips: tuple[IPAddress, ...] = custom(
        "fake-instance-ips",
        "FAKE_INSTANCE_IPS",
        "IPs handed to fake instances in order (default: 198.18.0.0/15).",
        default=(),
        default_text="",
        parse=_parse_ips,
        kind="list",
    )
    userdata_limit: int | None = custom(
        "fake-userdata-limit",
        "FAKE_USERDATA_LIMIT",
        "Userdata limit, bytes (0: none).",
        default=None,
        default_text="",
        parse=_parse_limit,
        kind="int",
    )


class FakePlugin:
    """Entry point ``fake``: settings and factory for ``FakeProvider``."""

    name = "fake"
    settings_class = FakeSettings

    def build(self, config: FakeSettings, context: ProviderContext) -> FakeProvider:
        return FakeProvider(
            FakeConfig(
                create_delay=config.create_delay,
                delete_delay=config.delete_delay,
                fixed_ip=config.fixed_ip,
                instance_ips=config.instance_ips,
                userdata_limit=config.userdata_limit,
            )
        )


PLUGIN = FakePlugin()
