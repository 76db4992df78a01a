"""The local provider end to end: real VM-side programs, real namespaces, nothing left behind.

Loopback VMs need no privileges; netns VMs (``@pytest.mark.root``) get their own
network, mount and UTS namespaces and a veth pair numbered from a /24 of
198.18.0.0/15 chosen per test run.  Each test talks to the VM's
agent-protocol-forwarder over mutual TLS, as the daemon's agent proxy does, and
asserts what the VM left in the kernel, /proc and the file system.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import random
import shutil
import ssl
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import pytest
import pytest_asyncio
from google.protobuf import empty_pb2

from cloud_api_adaptor._pb import agent_pb2
from cloud_api_adaptor.apf import ApfConfig
from cloud_api_adaptor.errors import PermanentProviderError
from cloud_api_adaptor.kata_client import AgentClient
from cloud_api_adaptor.localvm import netns
from cloud_api_adaptor.localvm.config import GuestPrograms, LocalConfig
from cloud_api_adaptor.localvm.procs import VmIdentity, read_stat
from cloud_api_adaptor.localvm.provider import LocalProvider
from cloud_api_adaptor.localvm.records import VmRecord, VmState
from cloud_api_adaptor.provider import (
    TAG_CLUSTER,
    CreateRequest,
    Instance,
    InstanceSpec,
    Provider,
    ProviderContext,
)
from cloud_api_adaptor.proxy.tls import (
    CertKeyPair,
    issue_server_cert,
    make_client_context,
    new_ca,
    new_client_cert,
)
from cloud_api_adaptor.testing.contract import ProviderContract
from cloud_api_adaptor.testing.eventually import eventually
from cloud_api_adaptor.ttrpc import RpcError
from cloud_api_adaptor.ttrpc.client import Client
from cloud_api_adaptor.userdata import build_userdata
from tests.conftest import reap_local_vms

Mode = Literal["netns", "loopback"]
PORT = 15150
SERVER_NAME = "podvm-local-test"
#: one /24 of the benchmarking range per run, so a concurrent run or a daemon on the default never collides
TEST_SUBNET = ipaddress.IPv4Network(f"198.19.{random.randrange(1, 255)}.0/24")
READY_WITHIN = 60.0  # a bound against hangs, not a performance assertion


@dataclass(frozen=True)
class Tls:
    """The daemon's side of the agent channel: its CA's server cert goes in apf.json."""

    ca: CertKeyPair
    server: CertKeyPair
    client: CertKeyPair

    def client_context(self) -> ssl.SSLContext:
        return make_client_context(ca_pem=self.ca.cert_pem, client=self.client, profile=None)

    def userdata(self, pod: str = "pod-a") -> str:
        apf = ApfConfig(
            pod_name=pod,
            pod_namespace="default",
            tls_server_key=self.server.key_pem.decode(),
            tls_server_cert=self.server.cert_pem.decode(),
            tls_client_ca=self.client.cert_pem.decode(),
        )
        return build_userdata(apf.to_json(), "", None, False)


@pytest.fixture(scope="module")
def tls() -> Tls:
    ca = new_ca()
    return Tls(ca=ca, server=issue_server_cert(ca, SERVER_NAME), client=new_client_cert())


@pytest.fixture
def work() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="caa-lv", dir="/tmp"))
    try:
        yield path
    finally:
        reap_local_vms(path)  # a failed test must not leave VMs behind
        shutil.rmtree(path, ignore_errors=True)


def make_provider(mode: Mode, work: Path, **changes: Any) -> LocalProvider:
    config = LocalConfig(mode=mode, programs=GuestPrograms.installed(sys.executable), subnet=TEST_SUBNET)
    context = ProviderContext(
        node_name="node-a", cluster_id="test", state_dir=work, work_dir=work / "w", forwarder_port=PORT
    )
    return LocalProvider(replace(config, **changes), context)


def request(userdata: str, *, token: str | None = None, name: str = "podvm-a") -> CreateRequest:
    sandbox = uuid.uuid4().hex
    return CreateRequest(
        name=name,
        sandbox_id=sandbox,
        token=token or f"{sandbox}-0",
        spec=InstanceSpec(instance_type="small", vcpus=1, memory_mib=512),
        userdata=userdata,
        tags={TAG_CLUSTER: "test", "sandbox": sandbox},
    )


async def connect_agent(instance: Instance, tls: Tls) -> AgentClient:
    """Dial the VM's forwarder over mutual TLS until it answers Health/Check (it boots in the background)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_WITHIN
    while True:
        try:
            client = await Client.connect_tcp(
                str(instance.ips[0]), PORT, ssl=tls.client_context(), server_hostname=SERVER_NAME
            )
        except (RpcError, OSError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        agent = AgentClient(client)
        try:
            assert await agent.check(timeout=10) == 1  # SERVING
        except BaseException:
            await agent.aclose()
            raise
        return agent


def read_record(provider: LocalProvider, vm_id: str) -> VmRecord:
    record = provider.records.get(vm_id)
    assert record is not None
    return record


def vm_status(provider: LocalProvider, vm_id: str) -> dict[str, object]:
    body = json.loads((provider.vm_dir(vm_id) / "status.json").read_bytes())
    assert isinstance(body, dict)
    return body


def session_processes(leader: int) -> list[int]:
    """Live processes in the launcher's session or process group (zombies hold nothing)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None and not stat.is_zombie and leader in (stat.sid, stat.pgid):
                found.append(stat.pid)
    return found


def link_exists(name: str) -> bool:
    """Ask iproute2 (pyroute2's sync API must not run on the event loop's thread)."""
    shown = subprocess.run(["ip", "link", "show", "dev", name], check=False, capture_output=True)
    return shown.returncode == 0


def assert_nothing_left(provider: LocalProvider, record: VmRecord) -> None:
    assert record.pid is not None
    assert session_processes(record.pid) == []
    assert not provider.vm_dir(record.id).exists()
    assert provider.records.get(record.id) is None
    if record.netns:
        assert not (netns.NETNS_RUN_DIR / record.netns).exists()
        assert record.netns not in Path("/proc/self/mountinfo").read_text()
    if record.host_ifname:
        assert not link_exists(record.host_ifname)


async def wait_for_phase(provider: LocalProvider, vm_id: str, phase: str) -> None:
    await eventually(
        lambda: vm_status(provider, vm_id)["phase"] == phase, f"VM {vm_id} in phase {phase}", READY_WITHIN
    )


@pytest_asyncio.fixture
async def loopback(work: Path) -> AsyncIterator[LocalProvider]:
    provider = make_provider("loopback", work)
    yield provider
    for instance in await provider.list_instances({}):
        await provider.delete_instance(instance.id)


@pytest_asyncio.fixture
async def netns_provider(work: Path) -> AsyncIterator[LocalProvider]:
    provider = make_provider("netns", work)
    yield provider
    for instance in await provider.list_instances({}):
        await provider.delete_instance(instance.id)


# -- loopback mode (no privileges) ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_loopback_vm_answers_over_mutual_tls_and_delete_leaves_nothing(
    loopback: LocalProvider, tls: Tls
) -> None:
    userdata = tls.userdata()
    req = request(userdata)
    instance = await loopback.create_instance(req)
    assert instance.name == "podvm-a"
    assert instance.ips[0] in ipaddress.IPv4Network("127.0.0.0/8")
    assert [i.id for i in await loopback.list_instances({"sandbox": req.sandbox_id})] == [instance.id]

    agent = await connect_agent(instance, tls)
    try:
        details = await agent.guest_details()
        assert details.agent_details.version
    finally:
        await agent.aclose()

    vm_dir = loopback.vm_dir(instance.id)
    assert (vm_dir / "cidata" / "user-data").read_text() == userdata  # verbatim, as a cidata ISO carries it
    assert "local-hostname: podvm-a" in (vm_dir / "cidata" / "meta-data").read_text()
    apf = json.loads((vm_dir / "root" / "run" / "peerpod" / "apf.json").read_text())  # provisioned
    assert apf["pod-name"] == "pod-a"

    record = read_record(loopback, instance.id)
    assert record.pid is not None and session_processes(record.pid)
    await loopback.delete_instance(instance.id)
    assert_nothing_left(loopback, record)
    await loopback.delete_instance(instance.id)  # idempotent


@pytest.mark.asyncio
async def test_create_is_idempotent_on_the_token_and_restarts_nothing(
    loopback: LocalProvider, tls: Tls
) -> None:
    req = request(tls.userdata())
    first = await loopback.create_instance(req)
    pid = read_record(loopback, first.id).pid
    again = await loopback.create_instance(req)
    assert again == first
    assert read_record(loopback, first.id).pid == pid
    assert vm_status(loopback, first.id)["pid"] == pid
    assert len(await loopback.list_instances({TAG_CLUSTER: "test"})) == 1


@pytest.mark.asyncio
async def test_concurrent_vms_get_distinct_addresses_and_all_answer(
    loopback: LocalProvider, tls: Tls
) -> None:
    instances = await asyncio.gather(
        *(loopback.create_instance(request(tls.userdata(f"pod-{i}"), name=f"podvm-{i}")) for i in range(3))
    )
    assert len({i.ips[0] for i in instances}) == 3
    agents = await asyncio.gather(*(connect_agent(i, tls) for i in instances))
    for agent in agents:
        await agent.aclose()
    records = [read_record(loopback, i.id) for i in instances]
    await asyncio.gather(*(loopback.delete_instance(i.id) for i in instances))
    for record in records:
        assert_nothing_left(loopback, record)


@pytest.mark.asyncio
async def test_a_vm_outlives_its_provider_and_a_new_provider_finds_and_deletes_it(
    work: Path, tls: Tls
) -> None:
    first = make_provider("loopback", work)
    instance = await first.create_instance(request(tls.userdata()))
    record = read_record(first, instance.id)
    del first  # the daemon dies without any cleanup

    second = make_provider("loopback", work)
    assert [i.id for i in await second.list_instances({TAG_CLUSTER: "test"})] == [instance.id]
    agent = await connect_agent(instance, tls)
    await agent.aclose()
    await second.delete_instance(instance.id)
    assert_nothing_left(second, record)


@pytest.mark.asyncio
async def test_a_create_interrupted_before_its_record_was_updated_is_redone_without_leaks(
    loopback: LocalProvider, tls: Tls
) -> None:
    req = request(tls.userdata())
    instance = await loopback.create_instance(req)
    launched = read_record(loopback, instance.id)
    assert launched.pid is not None
    # The daemon died after starting the launcher but before recording it.
    loopback.records.put(launched.evolve(state=VmState.CREATING, pid=None, start_time=None))

    again = await loopback.create_instance(req)
    assert again.id == instance.id
    redone = read_record(loopback, instance.id)
    assert redone.state is VmState.LAUNCHED and redone.pid != launched.pid
    assert session_processes(launched.pid) == []  # the first launch was found (status.json) and stopped
    agent = await connect_agent(again, tls)
    await agent.aclose()


@pytest.mark.asyncio
async def test_a_dying_agent_crashes_the_vm_which_stays_listed_until_deleted(loopback: LocalProvider) -> None:
    crashing = replace(loopback.config.programs, agent=(sys.executable, "-c", "raise SystemExit(3)"))
    provider = LocalProvider(replace(loopback.config, programs=crashing), loopback.context)
    instance = await provider.create_instance(request("#cloud-config\n"))
    await wait_for_phase(provider, instance.id, "crashed")
    assert "agent exited with 3" in str(vm_status(provider, instance.id)["detail"])
    assert [i.id for i in await provider.list_instances({})] == [instance.id]
    record = read_record(provider, instance.id)
    await provider.delete_instance(instance.id)
    assert_nothing_left(provider, record)


@pytest.mark.asyncio
async def test_a_vm_deleted_while_it_boots_stops_at_once(work: Path) -> None:
    provider = make_provider("loopback", work, boot_delay=3600.0)
    instance = await provider.create_instance(request("#cloud-config\n"))
    assert vm_status(provider, instance.id)["phase"] in {"starting", "booting"}
    record = read_record(provider, instance.id)
    await provider.delete_instance(instance.id)
    assert_nothing_left(provider, record)


def processes_mentioning(path: Path) -> list[int]:
    """Live processes whose command line names ``path`` (every loopback VM program does)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        stat = read_stat(int(entry.name))
        if str(path).encode() in cmdline and stat is not None and not stat.is_zombie:
            found.append(int(entry.name))
    return found


@pytest.mark.asyncio
async def test_a_create_cancelled_midway_leaves_nothing(work: Path, tls: Tls) -> None:
    provider = make_provider("loopback", work)
    task = asyncio.create_task(provider.create_instance(request(tls.userdata())))
    await eventually(
        lambda: any(provider.vms_dir.glob("*/launch.json")), "a launch spec written", interval=0.001
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await provider.list_instances({}) == []
    assert list(provider.vms_dir.iterdir()) == []
    assert processes_mentioning(work) == []


@pytest.mark.asyncio
async def test_a_launch_that_cannot_start_fails_permanently_and_leaves_nothing(work: Path) -> None:
    broken = GuestPrograms.installed("/nonexistent/bin/python")
    provider = make_provider("loopback", work, programs=broken)
    with pytest.raises(PermanentProviderError, match="cannot start"):
        await provider.create_instance(request("#cloud-config\n"))
    assert await provider.list_instances({}) == []
    assert list(provider.vms_dir.iterdir()) == []


@pytest.mark.asyncio
async def test_verify_passes_with_the_installed_programs_and_names_a_missing_one(work: Path) -> None:
    results = await make_provider("loopback", work).verify()
    assert {r.name for r in results} == {"local.mode", "local.programs", "local.work-dir"}
    assert all(r.ok for r in results), results
    missing = replace(GuestPrograms.installed(sys.executable), forwarder=("/nonexistent/apf",))
    results = await make_provider("loopback", work, programs=missing).verify()
    bad = [r for r in results if not r.ok]
    assert [r.name for r in bad] == ["local.programs"] and "/nonexistent/apf" in bad[0].detail


@asynccontextmanager
async def unreadable_records(provider: Provider) -> AsyncIterator[None]:
    """The local provider's "cloud API" fails: its record directory is a plain file."""
    assert isinstance(provider, LocalProvider)
    store = provider.records
    real = store.root
    blocker = real.parent / "not-a-directory"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("")
    store.root = blocker
    try:
        yield
    finally:
        store.root = real
        blocker.unlink()


class TestLocalLoopbackContract(ProviderContract):
    """The provider contract on loopback VMs (held in boot so the suite stays fast)."""

    unknown_instance_id = "local-0000000000"

    @pytest.fixture(autouse=True)
    def _work(self, work: Path) -> None:
        self.work = work

    async def make_provider(self) -> Provider:
        return make_provider("loopback", self.work, boot_delay=3600.0)

    async def cloud_instance_ids(self, provider: Provider) -> set[str]:
        records = self.work / "w" / "records"
        return {p.stem for p in records.glob("local-*.json")} if records.exists() else set()

    def broken_cloud(self, provider: Provider) -> AbstractAsyncContextManager[None] | None:
        return unreadable_records(provider)


# -- netns mode (root) ---------------------------------------------------------------------------------


def run_in_vm(pid: int, *argv: str) -> str:
    """Run a command in the VM's namespaces (as a debugging user would with nsenter)."""
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "-m", "-u", *argv], check=True, capture_output=True, text=True
    ).stdout


@pytest.mark.root
@pytest.mark.asyncio
async def test_a_netns_vm_has_its_own_namespaces_and_real_paths_and_leaves_nothing(
    netns_provider: LocalProvider, tls: Tls
) -> None:
    instance = await netns_provider.create_instance(request(tls.userdata(), name="podvm-ns"))
    record = read_record(netns_provider, instance.id)
    assert record.netns and record.host_ifname and record.pid and record.host_address
    assert instance.ips[0] in TEST_SUBNET
    assert (netns.NETNS_RUN_DIR / record.netns).exists()
    assert link_exists(record.host_ifname)

    agent = await connect_agent(instance, tls)
    try:  # what the agent writes for a sandbox stays inside the VM
        sandbox = agent_pb2.CreateSandboxRequest(sandbox_id="sb-ns", hostname="pod")
        await agent._client.call("grpc.AgentService", "CreateSandbox", sandbox, empty_pb2.Empty)
    finally:
        await agent.aclose()
    assert run_in_vm(record.pid, "ls", "/run/sandbox-ns").split() == ["ipc", "uts"]
    assert not Path("/run/sandbox-ns").exists()
    # Every VM process lives in the VM's network namespace (what delete also looks for).
    in_netns = VmIdentity.resolve(None, None, netns.NETNS_RUN_DIR / record.netns).members()
    assert record.pid in in_netns and len(in_netns) >= 3

    # The programs ran with their real default paths, in the VM's own mount namespace.
    assert json.loads(run_in_vm(record.pid, "cat", "/run/peerpod/apf.json"))["pod-name"] == "pod-a"
    assert run_in_vm(record.pid, "cat", "/media/cidata/user-data") == tls.userdata()
    assert "agent.sock" in run_in_vm(record.pid, "ls", "/run/kata-containers")
    assert "podns" in run_in_vm(record.pid, "ls", "/run/netns")
    assert run_in_vm(record.pid, "hostname").strip() == "podvm-ns"
    addresses = run_in_vm(record.pid, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
    assert f"{instance.ips[0]}/30" in addresses
    assert f"default via {record.host_address}" in run_in_vm(record.pid, "ip", "route")

    await netns_provider.delete_instance(instance.id)
    assert_nothing_left(netns_provider, record)


@pytest.mark.root
@pytest.mark.asyncio
async def test_netns_vms_get_distinct_blocks_and_survive_a_provider_restart(work: Path, tls: Tls) -> None:
    first = make_provider("netns", work)
    a = await first.create_instance(request(tls.userdata("pod-a"), name="podvm-a"))
    b = await first.create_instance(request(tls.userdata("pod-b"), name="podvm-b"))
    records = [read_record(first, a.id), read_record(first, b.id)]
    assert records[0].block != records[1].block and a.ips != b.ips
    del first

    second = make_provider("netns", work)
    assert {i.id for i in await second.list_instances({TAG_CLUSTER: "test"})} == {a.id, b.id}
    for instance in (a, b):
        agent = await connect_agent(instance, tls)
        await agent.aclose()
    for instance, record in zip((a, b), records, strict=True):
        await second.delete_instance(instance.id)
        assert_nothing_left(second, record)


@pytest.mark.root
@pytest.mark.asyncio
async def test_netns_verify_passes_and_flags_a_subnet_the_host_already_uses(work: Path) -> None:
    results = await make_provider("netns", work).verify()
    assert all(r.ok for r in results), results
    clash = ipaddress.IPv4Network("198.18.0.0/15")
    name = f"caa-t{os.getpid() % 100000}"
    peer = f"{name}p"
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", peer], check=True)
    try:
        subprocess.run(
            ["ip", "addr", "add", f"{TEST_SUBNET.network_address + 1}/24", "dev", name], check=True
        )
        results = await make_provider("netns", work, subnet=clash).verify()
        bad = [r for r in results if not r.ok]
        assert [r.name for r in bad] == ["local.subnet"] and name in bad[0].detail
    finally:
        subprocess.run(["ip", "link", "del", name], check=True)


@pytest.mark.root
class TestLocalNetnsContract(ProviderContract):
    """The provider contract on netns VMs (held in boot so the suite stays fast)."""

    unknown_instance_id = "local-0000000000"

    @pytest.fixture(autouse=True)
    def _work(self, work: Path) -> None:
        self.work = work

    async def make_provider(self) -> Provider:
        return make_provider("netns", self.work, boot_delay=3600.0)

    async def cloud_instance_ids(self, provider: Provider) -> set[str]:
        """VMs whose network namespace exists in the kernel's name directory."""
        records = self.work / "w" / "records"
        ids = {p.stem for p in records.glob("local-*.json")} if records.exists() else set()
        return {i for i in ids if (netns.NETNS_RUN_DIR / LocalProvider.netns_name(i)).exists()}

    def broken_cloud(self, provider: Provider) -> AbstractAsyncContextManager[None] | None:
        return unreadable_records(provider)
