"""list-then-watch against a real API server: a restart of the API server loses the watch's
resourceVersion (410 Gone), and the loop lists again instead of missing changes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap

from cloud_api_adaptor.kube.api import KubeApi, KubeError, TokenBucket
from tests.k8s.cluster import KubeCluster

pytestmark = pytest.mark.asyncio


async def test_a_gone_resource_version_makes_the_watch_list_again(
    kube_cluster: KubeCluster, kube_client: AsyncClient, kube_namespace: str
) -> None:
    api = KubeApi(kube_client)
    lists: list[list[str]] = []
    events: list[tuple[str, str]] = []
    done = asyncio.Event()

    async def on_list(items: list[Any]) -> None:
        lists.append(sorted(i.metadata.name for i in items))
        if len(lists) == 1:
            # the API server restarts between the list and the watch: the version is gone,
            # and a change happens that only a new list (or the watch) can report
            await asyncio.to_thread(kube_cluster.stop_apiserver)
            await asyncio.to_thread(kube_cluster.start_apiserver)
            await kube_client.create(ConfigMap(metadata=ObjectMeta(name="during", namespace=kube_namespace)))
        else:
            await kube_client.create(ConfigMap(metadata=ObjectMeta(name="after", namespace=kube_namespace)))

    async def on_event(kind: str, obj: Any) -> None:
        events.append((kind, obj.metadata.name))
        if obj.metadata.name == "after":
            done.set()

    await kube_client.create(ConfigMap(metadata=ObjectMeta(name="before", namespace=kube_namespace)))
    watcher = asyncio.ensure_future(
        api.list_then_watch(ConfigMap, on_list, on_event, namespace=kube_namespace)
    )
    try:
        await asyncio.wait_for(done.wait(), 60)
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
    assert lists == [["before"], ["before", "during"]]
    assert ("ADDED", "after") in events


async def test_a_refused_request_is_a_permanent_error_naming_the_status(
    kube_client: AsyncClient, kube_namespace: str
) -> None:
    api = KubeApi(kube_client, retry_delays=())
    body = ConfigMap(metadata=ObjectMeta(name="Not_A_Name", namespace=kube_namespace))
    with pytest.raises(KubeError) as caught:
        await api.call("creating a config map", lambda: kube_client.create(body))
    assert caught.value.status == 422
    assert not caught.value.temporary
    assert (
        await api.get_or_none("reading", lambda: kube_client.get(ConfigMap, "nope", namespace=kube_namespace))
        is None
    )


async def test_the_token_bucket_lets_a_burst_through_then_paces() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=10.0, burst=3, clock=lambda: now[0])
    for _ in range(3):
        await asyncio.wait_for(bucket.acquire(), 1)  # the burst: no waiting
    waiter = asyncio.ensure_future(bucket.acquire())
    await asyncio.sleep(0)
    assert not waiter.done()  # the fourth waits for a token
    now[0] += 0.1
    await asyncio.wait_for(waiter, 5)
