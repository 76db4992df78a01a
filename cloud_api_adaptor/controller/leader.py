"""Leader election on a coordination.k8s.io/v1 Lease, as client-go does it.

Only one controller replica deletes VMs at a time (two would only race to
delete the same VM, harmless but noisy; a split brain during a provider
outage would double the API calls).  The holder renews ``renewTime`` every
``retry_period``; the others take over when the Lease has not changed for
``lease_duration`` *as they observed it* (their own clock, so clock skew
between nodes does not matter), or at once when the holder released it on
shutdown.  A leader that could not renew for ``renew_deadline`` stops working
before anyone else may start (renew_deadline < lease_duration).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable

import httpx2
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

logger = logging.getLogger(__name__)


class LeaderElector:
    def __init__(
        self,
        client: AsyncClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float,
        renew_deadline: float,
        retry_period: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._client = client
        self._namespace = namespace
        self._name = name
        self.identity = identity
        self._duration = lease_duration
        self._renew_deadline = renew_deadline
        self._retry = retry_period
        self._clock = clock
        self._on_change = on_change
        self._leading = asyncio.Event()
        self._last_renew = 0.0
        self._observed: tuple[str, float] | None = None  # (resourceVersion, when we saw it change)
        self.holder: str = ""

    @property
    def is_leader(self) -> bool:
        return self._leading.is_set()

    async def wait_leader(self) -> None:
        await self._leading.wait()

    def _set(self, leading: bool) -> None:
        if leading == self.is_leader:
            return
        if leading:
            self._leading.set()
            logger.info(
                "controller: %s became the leader (Lease %s/%s)", self.identity, self._namespace, self._name
            )
        else:
            self._leading.clear()
            logger.warning("controller: %s is no longer the leader", self.identity)
        if self._on_change is not None:
            self._on_change(leading)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Acquire and renew until ``stop`` is set (or cancelled); then release: no successor waits."""
        stop = stop or asyncio.Event()
        try:
            while not stop.is_set():
                try:
                    renewed = await self.try_acquire_or_renew()
                except ApiError as exc:
                    logger.warning("controller: Lease %s: %s", self._name, exc)
                    renewed = False
                except httpx2.HTTPError as exc:  # the API server is unreachable
                    logger.warning("controller: Lease %s: %s", self._name, exc)
                    renewed = False
                now = self._clock()
                if renewed:
                    self._last_renew = now
                    self._set(True)
                elif self.is_leader and (
                    self.holder != self.identity or now - self._last_renew > self._renew_deadline
                ):
                    self._set(False)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._retry)
        finally:
            await asyncio.shield(self.release())

    def _spec(self, current: LeaseSpec | None, now: dt.datetime) -> LeaseSpec:
        taking_over = current is None or current.holderIdentity != self.identity
        transitions = (current.leaseTransitions or 0) if current is not None else 0
        return LeaseSpec(
            holderIdentity=self.identity,
            leaseDurationSeconds=max(1, round(self._duration)),
            acquireTime=now if taking_over or current is None else current.acquireTime,
            renewTime=now,
            leaseTransitions=transitions + 1 if taking_over and current is not None else transitions,
        )

    async def try_acquire_or_renew(self) -> bool:
        now = dt.datetime.now(dt.UTC)
        try:
            lease = await self._client.get(Lease, self._name, namespace=self._namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            fresh = Lease(
                metadata=ObjectMeta(name=self._name, namespace=self._namespace), spec=self._spec(None, now)
            )
            try:
                await self._client.create(fresh)
            except ApiError as create_error:
                if create_error.status.code == 409:
                    return False
                raise
            self.holder = self.identity
            return True
        version = (lease.metadata.resourceVersion if lease.metadata else None) or ""
        if self._observed is None or self._observed[0] != version:
            self._observed = (version, self._clock())
        spec = lease.spec or LeaseSpec()
        self.holder = spec.holderIdentity or ""
        if self.holder and self.holder != self.identity:
            duration = spec.leaseDurationSeconds or self._duration
            if self._clock() - self._observed[1] < duration:
                return False
            logger.info("controller: Lease held by %s expired; taking over", self.holder)
        lease.spec = self._spec(spec, now)
        try:
            await self._client.replace(lease)
        except ApiError as exc:
            if exc.status.code == 409:  # someone else wrote it first
                return False
            raise
        self.holder = self.identity
        return True

    async def release(self) -> None:
        """Give the Lease up (holder cleared), if we hold it; best effort."""
        if not self.is_leader:
            return
        self._set(False)
        try:
            lease = await self._client.get(Lease, self._name, namespace=self._namespace)
            if lease.spec is None or lease.spec.holderIdentity != self.identity:
                return
            lease.spec.holderIdentity = None
            lease.spec.leaseDurationSeconds = 1
            await self._client.replace(lease)
            logger.info("controller: Lease %s released", self._name)
        except (ApiError, httpx2.HTTPError) as exc:
            logger.warning("controller: could not release Lease %s: %s", self._name, exc)
