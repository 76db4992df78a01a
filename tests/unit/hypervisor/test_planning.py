"""CreateVM's pure decisions and the recovery table, without a store, a CA or an event loop."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloud_api_adaptor.errors import InvalidInput
from cloud_api_adaptor.fsutil import make_private_dirs
from cloud_api_adaptor.hypervisor import planning
from cloud_api_adaptor.hypervisor.models import SandboxRecord, SandboxState
from cloud_api_adaptor.hypervisor.planning import PlanTarget, plan_sandbox
from cloud_api_adaptor.hypervisor.recovery import RecoveryAction, is_forgettable, recovery_action
from cloud_api_adaptor.provider import InstanceTypeInfo

HV = "io.katacontainers.config.hypervisor."
POD = {"io.kubernetes.cri.sandbox-name": "web", "io.kubernetes.cri.sandbox-namespace": "shop"}
CATALOGUE = (
    InstanceTypeInfo("small", 1, 512),
    InstanceTypeInfo("medium", 2, 2048),
    InstanceTypeInfo("large", 4, 8192),
    InstanceTypeInfo("gpu", 4, 16384, 1),
)
TARGET = PlanTarget(
    pods_dir="/run/peerpod/pods",
    instance_types=tuple(t.name for t in CATALOGUE),
    default_instance_type="small",
    default_image="base.qcow2",
    catalogue=CATALOGUE,
)


def no_tls(name: str) -> dict[str, Any]:
    return {}


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ({}, "small"),
        ({HV + "default_vcpus": "2", HV + "default_memory": "2048"}, "medium"),
        ({HV + "default_vcpus": "3", HV + "default_memory": "100"}, "large"),
        ({HV + "default_vcpus": "4"}, "small"),  # one of the two alone: the default, as in Go
        ({HV + "default_gpus": "1"}, "gpu"),
        ({HV + "machine_type": "medium", HV + "default_vcpus": "4", HV + "default_memory": "8192"}, "medium"),
    ],
)
def test_instance_type_selection(sizes: dict[str, str], expected: str) -> None:
    assert plan_sandbox("sb1", {**POD, **sizes}, TARGET, tls_fields=no_tls).instance_type == expected


@pytest.mark.parametrize(
    ("sandbox_id", "annotations", "field"),
    [
        ("", POD, "id"),
        ("a/b", POD, "id"),
        ("x" * 90, POD, "id"),
        ("sb1", {"io.kubernetes.cri.sandbox-name": "web"}, "io.kubernetes.cri.sandbox-namespace"),
        ("sb1", {**POD, HV + "default_vcpus": "x"}, HV + "default_vcpus"),
        ("sb1", {**POD, HV + "default_gpus": "9"}, HV + "machine_type"),
        ("sb1", {**POD, HV + "machine_type": "huge"}, HV + "machine_type"),
        ("sb1", {**POD, HV + "cc_init_data": "not = [toml"}, HV + "cc_init_data"),
    ],
)
def test_refusals_name_the_field(sandbox_id: str, annotations: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        plan_sandbox(sandbox_id, annotations, TARGET, tls_fields=no_tls)
    assert err.value.field == field


def test_the_record_carries_every_decision_and_the_rendered_cloud_config() -> None:
    record = plan_sandbox(
        "sb1",
        {**POD, HV + "image": "custom.qcow2"},
        TARGET,
        tls_fields=lambda name: {"tls-server-cert": f"cert for {name}"},
        netns_path="/run/netns/pod",
        pod_network={"podIP": "10.0.0.5/24"},
        vni=555000,
        now=42.0,
    )
    assert (record.id, record.state, record.instance_name, record.image) == (
        "sb1",
        SandboxState.CREATED,
        "podvm-web-sb1",
        "custom.qcow2",
    )
    assert (record.agent_socket_path, record.vni, record.created_at) == (
        "/run/peerpod/pods/sb1/agent.ttrpc",
        555000,
        42.0,
    )
    assert record.request_digest == planning.request_digest(
        "sb1", {**POD, HV + "image": "custom.qcow2"}, "/run/netns/pod"
    )
    files = {f["path"]: f.get("content", "") for f in yaml.safe_load(record.userdata)["write_files"]}
    apf = json.loads(files["/run/peerpod/apf.json"])
    assert (apf["pod-name"], apf["tls-server-cert"], apf["pod-network"]["podIP"]) == (
        "web",
        "cert for podvm-web-sb1",
        "10.0.0.5/24",
    )


def test_userdata_above_the_provider_limit_is_refused_before_anything_is_created() -> None:
    small = PlanTarget(pods_dir="/p", userdata_limit=50)
    with pytest.raises(InvalidInput, match="above the provider's limit of 50 bytes") as err:
        plan_sandbox("sb1", POD, small, tls_fields=no_tls)
    assert err.value.field == "userdata"


def test_the_same_request_plans_the_same_record() -> None:
    one = plan_sandbox("sb1", POD, TARGET, tls_fields=no_tls, now=1.0)
    two = plan_sandbox("sb1", dict(reversed(list(POD.items()))), TARGET, tls_fields=no_tls, now=1.0)
    assert one == two


@pytest.mark.parametrize(
    ("state", "action"),
    [
        (SandboxState.CREATED, RecoveryAction.NOTHING),
        (SandboxState.STARTING, RecoveryAction.UNDO_START),
        (SandboxState.RUNNING, RecoveryAction.RESTORE),
        (SandboxState.FAILED, RecoveryAction.NOTHING),
        (SandboxState.STOPPING, RecoveryAction.FINISH_DELETE),
        (SandboxState.STOPPED, RecoveryAction.NOTHING),
    ],
)
def test_what_a_restart_does_with_each_state(state: SandboxState, action: RecoveryAction) -> None:
    record = plan_sandbox("sb1", POD, TARGET, tls_fields=no_tls).with_changes(state=state)
    assert recovery_action(record) is action


@pytest.mark.parametrize(
    ("state", "age", "forget"),
    [
        (SandboxState.STOPPED, 3601.0, True),
        (SandboxState.STOPPED, 3599.0, False),
        (SandboxState.FAILED, 99999.0, False),
        (SandboxState.RUNNING, 99999.0, False),
    ],
)
def test_only_old_tombstones_are_forgotten(state: SandboxState, age: float, forget: bool) -> None:
    record: SandboxRecord = plan_sandbox("sb1", POD, TARGET, tls_fields=no_tls).with_changes(
        state=state, updated_at=1000.0
    )
    assert is_forgettable(record, now=1000.0 + age) is forget


def test_private_dirs_are_0700_all_the_way_down_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        make_private_dirs(tmp_path / "a" / "b" / "c")
    finally:
        os.umask(old)
    for path in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    (tmp_path / "a").chmod(0o755)
    make_private_dirs(tmp_path / "a" / "b")  # existing directories are left as they are
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o755
