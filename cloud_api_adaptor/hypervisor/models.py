"""The sandbox record and its state machine.

One record per sandbox is persisted (``cloud_api_adaptor.hypervisor.store``) before and
after every cloud call, so a daemon restart can finish or undo whatever was in
flight.  Records are versioned JSON, never pickles.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cloud_api_adaptor.errors import FailedPrecondition

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
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("record is not a JSON object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"unsupported record schema_version {version!r}")
        data["state"] = SandboxState(data["state"])
        data["instance_ips"] = tuple(data.get("instance_ips", ()))
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
