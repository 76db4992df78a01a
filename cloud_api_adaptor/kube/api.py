"""A thin layer over lightkube's ``AsyncClient``: rate limit, bounded retries, typed errors,
and list-then-watch with re-list on 410 Gone.

Why here and not in each caller: every request the daemon or the controller makes is
paced by one token bucket (``KUBE_API_QPS``/``KUBE_API_BURST``, like client-go's), a
request that fails for a reason that may pass (connection refused, timeout, 429, 5xx)
is retried a bounded number of times with backoff, and what comes out is ``KubeError``
saying whether to try again later (``temporary``) or not, with the HTTP status.
lightkube has no informer: ``list_then_watch`` is the usual list, watch from the list's
resourceVersion, re-list when the server says the version is gone (410).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

import httpx2
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError

from cloud_api_adaptor.errors import AdaptorError

logger = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_DELAYS = (0.2, 0.5, 1.0)
#: statuses worth retrying: the API server is overloaded, restarting, or throttling us
TEMPORARY_STATUSES = frozenset({429, 500, 502, 503, 504})
WATCH_SERVER_TIMEOUT = 300


class KubeError(AdaptorError):
    """A Kubernetes API call failed; ``temporary``: trying again later may work."""

    def __init__(self, message: str, *, status: int = 0, temporary: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.temporary = temporary


class TokenBucket:
    """``rate`` requests per second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = self._clock()
                self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
                self._last = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self._tokens) / self._rate)


def translate(exc: BaseException, what: str) -> KubeError:
    """The one place lightkube/httpx errors become ``KubeError``."""
    if isinstance(exc, ApiError):
        code = int(exc.status.code or 0)
        return KubeError(
            f"{what}: {code} {exc.status.message}", status=code, temporary=code in TEMPORARY_STATUSES
        )
    if isinstance(exc, httpx2.HTTPError):
        return KubeError(f"{what}: API server unreachable: {exc or type(exc).__name__}", temporary=True)
    return KubeError(f"{what}: {exc}")


class KubeApi:
    """The daemon's (or the controller's) one Kubernetes client; see the module docstring."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        qps: float = 20.0,
        burst: int = 40,
        retry_delays: Sequence[float] = RETRY_DELAYS,
    ) -> None:
        self.client = client
        self._bucket = TokenBucket(qps, burst)
        self._retry_delays = tuple(retry_delays)

    async def call(self, what: str, request: Callable[[], Awaitable[T]], *, retry: bool = True) -> T:
        """Run ``request`` paced by the rate limit; temporary failures retried boundedly."""
        delays = self._retry_delays if retry else ()
        for attempt in range(len(delays) + 1):
            await self._bucket.acquire()
            try:
                return await request()
            except (ApiError, httpx2.HTTPError) as exc:
                error = translate(exc, what)
                if not error.temporary or attempt >= len(delays):
                    raise error from exc
                logger.debug("%s (attempt %d), retrying", error, attempt + 1)
            await asyncio.sleep(delays[attempt])
        raise AssertionError("unreachable")

    async def get_or_none(self, what: str, request: Callable[[], Awaitable[T]]) -> T | None:
        """``call`` where 404 Not Found is an answer (None), not an error."""
        try:
            return await self.call(what, request)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def list_then_watch(
        self,
        resource: type[Any],
        on_list: Callable[[list[Any]], Awaitable[None]],
        on_event: Callable[[str, Any], Awaitable[None]],
        *,
        namespace: str | None = None,
        labels: Mapping[str, str] | None = None,
        server_timeout: int = WATCH_SERVER_TIMEOUT,
    ) -> NoReturn:
        """List, hand the items to ``on_list``, then stream changes to ``on_event`` for ever.

        A 410 Gone (the version fell out of the server's history) starts again with a
        fresh list, so ``on_list`` must reconcile from scratch.  Other failures raise
        ``KubeError``: the caller's supervisor restarts the loop with backoff.
        """
        what = f"watching {getattr(resource, '__name__', resource)}"
        selector: Any = dict(labels) if labels else None

        async def fetch() -> tuple[str, list[Any]]:
            listing = self.client.list(resource, namespace=namespace, labels=selector)
            items = [obj async for obj in listing]
            # lightkube records the collection's version even when it is empty
            return str(listing.resourceVersion), items

        while True:
            version, items = await self.call(f"listing for {what}", fetch)
            await on_list(items)
            try:
                await self._bucket.acquire()
                stream = self.client.watch(
                    resource,
                    namespace=namespace,
                    labels=selector,
                    resource_version=version,
                    server_timeout=server_timeout,
                )
                async for kind, obj in stream:
                    await on_event(kind, obj)
            except (ApiError, httpx2.HTTPError) as exc:
                error = translate(exc, what)
                if error.status == 410:
                    logger.info("%s: resource version %s is gone; listing again", what, version)
                    continue
                raise error from exc

    async def aclose(self) -> None:
        await self.client.close()
