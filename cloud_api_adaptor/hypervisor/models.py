"""The sandbox record and its state machine.

One record per sandbox is persisted (``cloud_api_adaptor.hypervisor.store``) before and
after every cloud call, so a daemon restart can finish or undo whatever was in
flight.  Records are versioned JSON, never pickles.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cloud_api_adaptor.errors import FailedPrecondition
from cloud_api_adaptor.jsontypes import json_type_name

SCHEMA_VERSION = 1


class SandboxState(StrEnum):
    """Where a sandbox is in its life.

    CREATED   CreateVM accepted; no cloud resources yet.
    STARTING  StartVM in flight: the intent (and idempotency token) is on disk
              before the cloud call; ``instance_id`` is set as soon as it is known.
    RUNNING   the VM answers on the agent channel.
    FAILED    StartVM failed and its instance was deleted; StopVM (or a new StartVM) may follow.
    STOPPING  StopVM in flight, or a cloud delete that failed and is retried in the background.
    STOPPED   tombstone: everything is gone; kept briefly so a repeated StopVM succeeds.
    """

    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"


_ALLOWED: dict[SandboxState, frozenset[SandboxState]] = {
    SandboxState.CREATED: frozenset({SandboxState.STARTING, SandboxState.STOPPING}),
    SandboxState.STARTING: frozenset({SandboxState.RUNNING, SandboxState.FAILED, SandboxState.STOPPING}),
    SandboxState.RUNNING: frozenset({SandboxState.STOPPING}),
    SandboxState.FAILED: frozenset({SandboxState.STARTING, SandboxState.STOPPING}),
    SandboxState.STOPPING: frozenset({SandboxState.STOPPED}),
    SandboxState.STOPPED: frozenset(),
}


@dataclass(frozen=True)
class SandboxRecord:
    """Everything needed to resume or undo a sandbox after a restart."""

    id: str
    pod_name: str
    pod_namespace: str
    request_digest: str  # identifies the CreateVM request, for idempotent repeats
    agent_socket_path: str
    instance_name: str
    instance_type: str
    image: str
    vcpus: int
    memory_mib: int
    gpus: int
    userdata: str = field(repr=False)
    netns_path: str = ""
    pod_network: dict[str, Any] | None = None
    vni: int | None = None
    state: SandboxState = SandboxState.CREATED
    attempt: int = 0  # StartVM attempts; part of the idempotency token
    instance_id: str = ""
    instance_ips: tuple[str, ...] = ()
    created_at: float = 0.0
    updated_at: float = 0.0
    last_error: str = ""
    #: the pod's UID (CreateVM annotation io.kubernetes.cri.sandbox-uid): owner of its PeerPod
    pod_uid: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def token(self) -> str:
        """Idempotency token for the current StartVM attempt: stable across retries and restarts."""
        return f"{self.id}-{self.attempt}"

    def is_live(self) -> bool:
        return self.state not in {SandboxState.STOPPED}

    def owns_instance(self) -> bool:
        """True while the sandbox may still have a cloud instance."""
        return self.state in {SandboxState.STARTING, SandboxState.RUNNING, SandboxState.STOPPING}

    def transition(self, new: SandboxState, **changes: Any) -> SandboxRecord:
        if new is not self.state and new not in _ALLOWED[self.state]:
            raise FailedPrecondition(f"sandbox {self.id} cannot go from {self.state.value} to {new.value}")
        return dataclasses.replace(self, state=new, **changes)

    def with_changes(self, **changes: Any) -> SandboxRecord:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> bytes:
        data = dataclasses.asdict(self)
        data["state"] = self.state.value
        data["instance_ips"] = list(self.instance_ips)
        return json.dumps(data, sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> SandboxRecord:
        """Decode a record strictly: every field checked for type and range; ``InvalidRecord`` names it.

        A record is trusted with paths the daemon listens on and VMs it deletes, so a
        wrong type (a number where a path belongs) is refused here rather than
        failing later, half-way through recovery.  Unknown keys (a newer daemon's
        optional fields) are ignored; a different ``schema_version`` is refused.
        """
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidRecord("record", f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidRecord("record", f"expected an object, got {json_type_name(data)}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise InvalidRecord(
                "schema_version", f"unsupported version {version!r} (this daemon reads {SCHEMA_VERSION})"
            )
        return cls(
            **{
                name: check(name, data)
                for name, check in _DECODERS.items()
                if name in data or name in _REQUIRED
            }
        )


class InvalidRecord(ValueError):
    """A sandbox record on disk that this daemon cannot trust; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _typed(
    kind: type | tuple[type, ...], expected: str, *, nullable: bool = False
) -> Callable[[str, dict[str, Any]], Any]:
    def check(name: str, data: dict[str, Any]) -> Any:
        if name not in data:
            raise InvalidRecord(name, "missing")
        value = data[name]
        if value is None and nullable:
            return None
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise InvalidRecord(name, f"expected {expected}, got boolean")
        if not isinstance(value, kind):
            raise InvalidRecord(name, f"expected {expected}, got {json_type_name(value)}")
        return value

    return check


def _bounded_int(low: int, high: int, *, nullable: bool = False) -> Callable[[str, dict[str, Any]], Any]:
    base = _typed(int, "an integer", nullable=nullable)

    def check(name: str, data: dict[str, Any]) -> Any:
        value = base(name, data)
        if value is not None and not low <= value <= high:
            raise InvalidRecord(name, f"{value} is outside {low}..{high}")
        return value

    return check


def _number(name: str, data: dict[str, Any]) -> float:
    value = _typed((int, float), "a number")(name, data)
    if not math.isfinite(value):
        raise InvalidRecord(name, f"{value} is not a finite number")
    return float(value)


def _state(name: str, data: dict[str, Any]) -> SandboxState:
    value = _typed(str, "a string")(name, data)
    try:
        return SandboxState(value)
    except ValueError:
        raise InvalidRecord(name, f"unknown state {value!r}") from None


def _sandbox_id(name: str, data: dict[str, Any]) -> str:
    value: str = _typed(str, "a string")(name, data)
    if not _ID.match(value) or value in {".", ".."}:
        raise InvalidRecord(name, f"invalid sandbox id {value[:140]!r}")
    return value


def _absolute_path(name: str, data: dict[str, Any], *, empty: bool = False) -> str:
    value: str = _typed(str, "a string")(name, data)
    if (value or not empty) and (not value.startswith("/") or "\x00" in value):
        raise InvalidRecord(name, f"expected an absolute path, got {value[:200]!r}")
    return value


def _netns_path(name: str, data: dict[str, Any]) -> str:
    return _absolute_path(name, data, empty=True)


def _ips(name: str, data: dict[str, Any]) -> tuple[str, ...]:
    value = _typed(list, "an array")(name, data)
    for item in value:
        if not isinstance(item, str):
            raise InvalidRecord(name, f"expected strings, got {json_type_name(item)}")
        try:
            ipaddress.ip_address(item)
        except ValueError:
            raise InvalidRecord(name, f"{item[:60]!r} is not an IP address") from None
    return tuple(value)


_STR = _typed(str, "a string")
_COUNT = _bounded_int(0, 1 << 31)
_DECODERS: dict[str, Callable[[str, dict[str, Any]], Any]] = {
    "id": _sandbox_id,
    "pod_name": _STR,
    "pod_namespace": _STR,
    "request_digest": _STR,
    "agent_socket_path": _absolute_path,
    "instance_name": _STR,
    "instance_type": _STR,
    "image": _STR,
    "vcpus": _COUNT,
    "memory_mib": _COUNT,
    "gpus": _COUNT,
    "userdata": _STR,
    "netns_path": _netns_path,
    "pod_network": _typed(dict, "an object", nullable=True),
    "vni": _bounded_int(1, (1 << 24) - 1, nullable=True),
    "state": _state,
    "attempt": _COUNT,
    "instance_id": _STR,
    "instance_ips": _ips,
    "created_at": _number,
    "updated_at": _number,
    "last_error": _STR,
    "pod_uid": _STR,
    "schema_version": _COUNT,
}
#: fields every record of this schema carries; the rest have defaults
_REQUIRED = frozenset(
    f.name
    for f in dataclasses.fields(SandboxRecord)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)
_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
