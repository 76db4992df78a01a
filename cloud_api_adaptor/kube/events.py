"""Events on the pod: why its VM could not start, or which VM it got and how fast.

``kubectl describe pod`` is where users look; the reason is typed from the error's
classification (errors.py), so alerts can match ``PeerPodQuotaExceeded`` rather than
parse messages.  Events are best effort but survive a short API outage: they wait in a
bounded queue (the oldest dropped beyond ``MAX_QUEUED``) and are sent when it is back.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import logging
import secrets
from dataclasses import dataclass

from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event

from cloud_api_adaptor.errors import (
    CapacityUnavailable,
    DeadlineExceeded,
    ImageNotFound,
    InvalidInput,
    PermanentProviderError,
    QuotaExceeded,
    TemporaryProviderError,
)
from cloud_api_adaptor.hypervisor.models import SandboxRecord
from cloud_api_adaptor.kube.api import KubeApi, KubeError

logger = logging.getLogger(__name__)

COMPONENT = "cloud-api-adaptor"
MAX_QUEUED = 256
MAX_MESSAGE = 1024
RETRY_DELAY = 5.0

#: most specific first: the first class the error is an instance of names the reason
REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (QuotaExceeded, "PeerPodQuotaExceeded"),
    (CapacityUnavailable, "PeerPodCapacityUnavailable"),
    (ImageNotFound, "PeerPodImageNotFound"),
    (InvalidInput, "PeerPodInvalidRequest"),
    (DeadlineExceeded, "PeerPodVMUnreachable"),
    (TemporaryProviderError, "PeerPodCloudUnavailable"),
    (PermanentProviderError, "PeerPodCreateFailed"),
)
STARTED = "PeerPodStarted"
FAILED = "PeerPodStartFailed"


def reason_for(error: BaseException) -> str:
    for kind, reason in REASONS:
        if isinstance(error, kind):
            return reason
    return FAILED


@dataclass(frozen=True)
class PodEvent:
    namespace: str
    pod_name: str
    pod_uid: str
    type: str  # Normal | Warning
    reason: str
    message: str
    at: datetime.datetime


class PodEvents:
    """Queues pod events and sends them; see the module docstring."""

    def __init__(self, api: KubeApi, node_name: str) -> None:
        self._api = api
        self._node_name = node_name
        self._queue: collections.deque[PodEvent] = collections.deque(maxlen=MAX_QUEUED)
        self._wake = asyncio.Event()

    def started(self, record: SandboxRecord, seconds: float) -> None:
        message = (
            f"pod VM {record.instance_name} started as instance {record.instance_id or '?'} "
            f"({record.instance_type or 'default type'}) in {seconds:.1f}s"
        )
        self._add(record, "Normal", STARTED, message)

    def start_failed(self, record: SandboxRecord, error: BaseException, seconds: float) -> None:
        cause = str(error) or type(error).__name__
        message = f"pod VM {record.instance_name} did not start after {seconds:.1f}s: {cause}"
        self._add(record, "Warning", reason_for(error), message)

    def _add(self, record: SandboxRecord, kind: str, reason: str, message: str) -> None:
        if len(self._queue) == self._queue.maxlen:
            logger.warning("pod event queue full: dropping the oldest event")
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        self._queue.append(
            PodEvent(
                record.pod_namespace,
                record.pod_name,
                record.pod_uid,
                kind,
                reason,
                message[:MAX_MESSAGE],
                now,
            )
        )
        self._wake.set()

    def queued(self) -> int:
        return len(self._queue)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                event = self._queue[0]
                try:
                    await self._send(event)
                except KubeError as exc:
                    # 401/403 may pass too: RBAC applied after the daemon, an authorizer catching up
                    if exc.temporary or exc.status in (401, 403):
                        logger.info(
                            "pod event for %s/%s not sent yet: %s", event.namespace, event.pod_name, exc
                        )
                        await asyncio.sleep(RETRY_DELAY)
                        continue
                    logger.warning("pod event for %s/%s dropped: %s", event.namespace, event.pod_name, exc)
                if self._queue and self._queue[0] is event:
                    self._queue.popleft()

    async def _send(self, event: PodEvent) -> None:
        body = Event(
            metadata=ObjectMeta(name=f"{event.pod_name}.{secrets.token_hex(8)}", namespace=event.namespace),
            involvedObject=ObjectReference(
                apiVersion="v1",
                kind="Pod",
                name=event.pod_name,
                namespace=event.namespace,
                uid=event.pod_uid or None,
            ),
            reason=event.reason,
            message=event.message,
            type=event.type,
            source=EventSource(component=COMPONENT, host=self._node_name or None),
            reportingComponent=COMPONENT,
            reportingInstance=self._node_name or COMPONENT,
            action="StartVM",
            firstTimestamp=event.at,
            lastTimestamp=event.at,
            count=1,
        )
        await self._api.call(
            f"event on pod {event.namespace}/{event.pod_name}", lambda: self._api.client.create(body)
        )
