"""The API server goes away during a lifecycle: pods still start and stop, and the outbox
(the sandbox records) brings the PeerPods up to date when it is back, even across a
daemon restart in between."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Node

from cloud_api_adaptor import kata_client as kata
from cloud_api_adaptor.daemon import Daemon
from tests.k8s import stand
from tests.k8s.cluster import KubeCluster

pytestmark = pytest.mark.asyncio


def outbox_pending(daemon: Daemon) -> float | None:
    """The daemon's ``caa_peerpod_outbox_pending`` gauge, as /metrics shows it."""
    return daemon.registry.get_sample_value("caa_peerpod_outbox_pending")


async def test_the_daemon_serves_through_an_outage_and_catches_up_after_a_restart(
    kube_cluster: KubeCluster, kube_client: AsyncClient, kube_namespace: str, short_tmp: Path
) -> None:
    await stand.apply_daemon_rbac(kube_client)
    node = f"node-{uuid.uuid4().hex[:6]}"
    await stand.create_node(kube_client, node)
    uid = await stand.create_pod(kube_client, kube_namespace, "db", node)
    provider = stand.SpyingProvider(kube_client, kube_namespace)
    sid = uuid.uuid4().hex
    async with stand.forwarder_stand_in() as port:
        settings = stand.daemon_settings(short_tmp, kube_cluster, node, port)
        daemon = await stand.start(settings, provider)
        try:
            await asyncio.to_thread(kube_cluster.stop_apiserver)
            try:
                await kata.create_vm(settings.socket, sid, stand.pod_annotations("db", kube_namespace, uid))
                await kata.start_vm(settings.socket, sid, timeout=60)  # no API server: the pod starts anyway
                [instance_id] = provider.instances
            finally:
                await daemon.aclose()  # the daemon goes away with its in-memory queue
                await asyncio.to_thread(kube_cluster.start_apiserver)
        finally:
            await daemon.aclose()

        # a new daemon on the same state directory: its records bring the PeerPod about
        daemon = await stand.start(settings, provider)
        try:

            async def caught_up() -> bool:
                items = await stand.peerpods(kube_client, kube_namespace)
                return bool(items) and items[0]["spec"]["instanceID"] == instance_id

            await stand.eventually_async(
                caught_up, "the PeerPod created with the instance id after the outage"
            )
            [peerpod] = await stand.peerpods(kube_client, kube_namespace)
            assert peerpod["status"]["state"] == "running"
            assert peerpod["metadata"]["ownerReferences"][0]["uid"] == uid

            async def outbox_empty() -> bool:
                return outbox_pending(daemon) == 0

            await stand.eventually_async(outbox_empty, "nothing left in the outbox")

            # down again for the stop: the VM goes, the PeerPod's release waits for the API server
            await asyncio.to_thread(kube_cluster.stop_apiserver)
            try:
                await kata.stop_vm(settings.socket, sid)
                assert provider.instances == {}
                assert outbox_pending(daemon) == 1  # the release, waiting (visible to monitoring)
            finally:
                await asyncio.to_thread(kube_cluster.start_apiserver)

            async def released() -> bool:
                return await stand.peerpods(kube_client, kube_namespace) == []

            await stand.eventually_async(released, "the PeerPod released once the API server is back")
            await stand.eventually_async(outbox_empty, "the outbox gauge back at 0")
        finally:
            await daemon.aclose()


async def test_the_daemon_starts_without_the_api_server_and_advertises_when_it_returns(
    kube_cluster: KubeCluster, kube_client: AsyncClient, short_tmp: Path
) -> None:
    await stand.apply_daemon_rbac(kube_client)
    node = f"node-{uuid.uuid4().hex[:6]}"
    await stand.create_node(kube_client, node)
    provider = stand.SpyingProvider(kube_client, "default")
    async with stand.forwarder_stand_in() as port:
        settings = stand.daemon_settings(short_tmp, kube_cluster, node, port)
        await asyncio.to_thread(kube_cluster.stop_apiserver)
        try:
            daemon = await stand.start(settings, provider)
            try:
                assert await kata.version(settings.socket)  # serving, with no API server
                assert daemon.kube is not None and not daemon.kube.capacity_advertised.is_set()
            finally:
                await asyncio.to_thread(kube_cluster.start_apiserver)
            try:
                await asyncio.wait_for(daemon.kube.capacity_advertised.wait(), 60)
            finally:
                await daemon.aclose()
        finally:
            await asyncio.to_thread(kube_cluster.start_apiserver)  # a no-op when it runs
    got = stand.as_dict(await kube_client.get(Node, node))
    assert got["status"]["capacity"]["kata.peerpods.io/vm"] == "10"
