"""What the daemon asks of the cluster for each sandbox state, and how errors become event reasons."""

from __future__ import annotations

import re

import pytest

from cloud_api_adaptor.errors import (
    CapacityUnavailable,
    DeadlineExceeded,
    ImageNotFound,
    InvalidInput,
    PermanentProviderError,
    QuotaExceeded,
    TemporaryProviderError,
)
from cloud_api_adaptor.hypervisor.models import SandboxRecord, SandboxState
from cloud_api_adaptor.kube.events import reason_for
from cloud_api_adaptor.kube.peerpods import desired, node_label, peerpod_name

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def record(state: SandboxState, **changes: object) -> SandboxRecord:
    base = SandboxRecord(
        id="a" * 64,
        pod_name="web",
        pod_namespace="shop",
        request_digest="d",
        agent_socket_path="/run/peerpod/pods/x/agent.ttrpc",
        instance_name="podvm-web-aaaaaaaa",
        instance_type="t3.small",
        image="ami-1",
        vcpus=1,
        memory_mib=2048,
        gpus=0,
        userdata="",
        state=state,
        attempt=2,
        pod_uid="uid-1",
        created_at=1_700_000_000.0,
        updated_at=1_700_000_060.0,
    )
    return base.with_changes(**changes)


def test_no_peerpod_before_start_vm() -> None:
    assert desired(record(SandboxState.CREATED), "aws", "node-a") is None


@pytest.mark.parametrize("state", [SandboxState.STARTING, SandboxState.RUNNING, SandboxState.STOPPING])
def test_a_live_sandbox_has_a_peerpod_owned_by_its_pod(state: SandboxState) -> None:
    want = desired(record(state, instance_id="i-1", instance_ips=("10.0.0.5",)), "aws", "node-a")
    assert want is not None and want.spec is not None and want.status is not None
    assert want.namespace == "shop"
    assert want.spec["instanceID"] == "i-1"
    assert want.spec["cloudProvider"] == "aws"
    assert want.spec["idempotencyToken"] == "a" * 64 + "-2"
    assert want.status["state"] == state.value
    assert want.status["instanceIPs"] == ["10.0.0.5"]
    assert want.status["createdAt"] == "2023-11-14T22:13:20Z"
    assert want.owner == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "web",
        "uid": "uid-1",
        "controller": True,
    }


def test_without_a_pod_uid_there_is_no_owner_reference() -> None:
    want = desired(record(SandboxState.STARTING, pod_uid=""), "aws", "node-a")
    assert want is not None and want.owner is None


def test_a_stopped_sandbox_has_no_peerpod() -> None:
    want = desired(record(SandboxState.STOPPED), "aws", "node-a")
    assert want is not None and want.spec is None


def test_the_name_is_stable_per_sandbox_and_a_dns_subdomain() -> None:
    long = record(SandboxState.STARTING, pod_name="p" * 253)
    assert peerpod_name(long) == peerpod_name(long)
    assert len(peerpod_name(long)) <= 253 and DNS_SUBDOMAIN.match(peerpod_name(long))
    assert peerpod_name(record(SandboxState.STARTING)) != peerpod_name(
        record(SandboxState.STARTING, id="b" * 64)
    )


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (QuotaExceeded("vCPU quota"), "PeerPodQuotaExceeded"),
        (CapacityUnavailable("no t3.small in zone a"), "PeerPodCapacityUnavailable"),
        (ImageNotFound("ami-1"), "PeerPodImageNotFound"),
        (
            InvalidInput("io.katacontainers.config.hypervisor.machine_type", "unknown"),
            "PeerPodInvalidRequest",
        ),
        (DeadlineExceeded("agent"), "PeerPodVMUnreachable"),
        (TemporaryProviderError("503"), "PeerPodCloudUnavailable"),
        (PermanentProviderError("403"), "PeerPodCreateFailed"),
        (RuntimeError("bug"), "PeerPodStartFailed"),
    ],
)
def test_event_reasons_follow_the_error_classification(error: BaseException, reason: str) -> None:
    assert reason_for(error) == reason


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        ("worker-1", "worker-1"),
        ("ip-10-0-0-1.ec2.internal", "ip-10-0-0-1.ec2.internal"),
        ("n" * 63, "n" * 63),
    ],
)
def test_the_node_label_is_the_node_name_when_it_fits(node: str, expected: str) -> None:
    assert node_label(node) == expected


def test_a_node_name_too_long_for_a_label_becomes_a_stable_digest() -> None:
    long_name = "node-" + "a" * 100 + ".example.com"
    value = node_label(long_name)
    assert value == node_label(long_name) and value != node_label(long_name + "x")
    assert len(value) <= 63 and re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", value)
    assert node_label("") != ""
