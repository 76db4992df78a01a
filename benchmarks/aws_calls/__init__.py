"""EC2 API calls per pod lifecycle, and 100 concurrent lifecycles, on the AWS provider against moto.

Every EC2 call the daemon makes goes through the fault proxy (no faults
injected), which counts them per action:

- start-up calls (once per daemon: the instance-type catalogue, the first
  orphan scan);
- one full lifecycle driven through the daemon's ttrpc socket, with the test
  playing the pod VM (mutual TLS, as in the integration tests); the first
  lifecycle also pays one-time calls (DescribeImages, once per AMI), so a second
  one gives the steady state.  Target: <= 3 (RunInstances, at most one
  describe, TerminateInstances);
- 100 concurrent lifecycles (CreateVM, StartVM, Health/Check, StopVM) against
  one lifecycle measured the same way in the same run: the ratio says how well
  they overlap (target: close to 1, not 100).  One pod VM stands in for every
  instance (it owns the whole address range moto hands out), so TLS is off
  for this part: one forwarder cannot present every VM's certificate.

The daemon runs in the integration tests' node network namespace
(``tests/integration/aws``), so it reaches moto and the VM subnet and nothing
else.  moto answers the odd concurrent RunInstances with a 500 (its subnet
address generator is not thread-safe; the traceback goes to stderr); the
provider retries it, which shows as a little over 3 calls per lifecycle.
Without root (no namespaces), the fallback measures create and delete
through the provider alone, on loopback.  Nothing is asserted: the numbers go
into the README.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cloud_api_adaptor import kata_client as kata

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the harness lives with the integration tests
    sys.path.insert(0, str(ROOT))

from benchmarks.cloud_lifecycles import calls_since, lifecycle, played_lifecycle  # noqa: E402
from cloud_api_adaptor.testing.eventually import eventually  # noqa: E402
from tests.integration.aws.cloud import AMI, REGION, Vpc, boot_pod_vm, ec2_client, serve_moto  # noqa: E402
from tests.integration.aws.harness import AwsNode, orphan_scans  # noqa: E402
from tests.integration.cloudstand.podvm import PodVm  # noqa: E402
from tests.integration.cloudstand.stand import SHARED_VM_RANGE  # noqa: E402

CONCURRENT = 100
BOUND = 600.0  # seconds: every phase is cut off well before this


def run() -> dict[str, Any]:
    if os.geteuid() == 0 and shutil.which("ip"):
        return asyncio.run(asyncio.wait_for(_in_namespaces(), BOUND))
    return asyncio.run(asyncio.wait_for(_loopback_only(), BOUND))


async def _in_namespaces() -> dict[str, Any]:
    server, hub = serve_moto("127.0.0.1")
    node: AwsNode | None = None
    try:
        node = await asyncio.to_thread(AwsNode, hub)
        proxy, endpoint = node.fault_proxy()

        daemon = await asyncio.to_thread(
            lambda: node.daemon(endpoint, ORPHAN_SCAN_INTERVAL="1h", PROXY_TIMEOUT="60s")
        )
        await eventually(lambda: orphan_scans(daemon), "the start-up orphan scan")
        startup = Counter(proxy.counts())

        async def boot(vm: PodVm, sid: str) -> None:
            [launched] = await eventually(lambda: node.vpc.of_sandbox(sid), "the pod's instance")
            await boot_pod_vm(vm, node.vpc, launched)

        first = await played_lifecycle(node, daemon, boot)
        after_first = Counter(proxy.counts())
        second = await played_lifecycle(node, daemon, boot)
        after_second = Counter(proxy.counts())
        await asyncio.to_thread(daemon.stop)
        leaked = len(node.vpc.live())

        # concurrency, then the moto floor, each from an empty moto (its describes scan every instance)
        await asyncio.to_thread(_fresh_vpc, node, hub)
        shared = node.pod_vm()
        node.stand.answer_on(SHARED_VM_RANGE)
        await shared.boot_shared()
        daemon = await asyncio.to_thread(
            lambda: node.daemon(
                endpoint, args=["-disable-tls"], ORPHAN_SCAN_INTERVAL="1h", PROXY_TIMEOUT="60s"
            )
        )
        # a new daemon: its first lifecycle pays DescribeImages
        await lifecycle(daemon, kata.kata_annotations("warm-up"))
        one = await lifecycle(daemon, kata.kata_annotations("single"))
        before = Counter(proxy.counts())
        assert daemon.proc is not None
        cpu = _cpu_seconds(daemon.proc.pid)
        started = time.perf_counter()
        pods = [kata.kata_annotations(f"pod-{i}") for i in range(CONCURRENT)]
        walls = await asyncio.gather(*(lifecycle(daemon, pod) for pod in pods))
        wall = time.perf_counter() - started
        cpu = _cpu_seconds(daemon.proc.pid) - cpu
        calls = calls_since(Counter(proxy.counts()), before)
        await asyncio.to_thread(daemon.stop)
        leaked += len(node.vpc.live())
        await asyncio.to_thread(_fresh_vpc, node, hub)
        floor = await asyncio.to_thread(_moto_floor, proxy.url, node.vpc, CONCURRENT)
        return {
            "mode": "daemon in a network namespace, moto over HTTP, calls counted by the fault proxy",
            "startup_calls": dict(sorted(startup.items())),
            "first_lifecycle_calls": calls_since(after_first, startup),
            "lifecycle_calls": calls_since(after_second, after_first),
            "lifecycle_calls_total": sum((after_second - after_first).values()),
            "lifecycle_calls_target": 3,
            "played_lifecycle_s": [round(first, 3), round(second, 3)],
            "concurrent": CONCURRENT,
            "concurrent_tls": False,
            "single_lifecycle_s": round(one, 3),
            "concurrent_wall_s": round(wall, 3),
            "concurrent_vs_single": round(wall / one, 2),
            "concurrent_lifecycle_p50_s": round(sorted(walls)[len(walls) // 2], 3),
            "daemon_cpu_s_per_lifecycle": round(cpu / CONCURRENT, 4),
            "moto_floor_s": round(floor, 3),
            "concurrent_vs_moto_floor": round(wall / floor, 2),
            "concurrent_calls": calls,
            "concurrent_calls_per_lifecycle": round(sum(calls.values()) / CONCURRENT, 2),
            "instances_left": leaked,
        }
    finally:
        if node is not None:
            await asyncio.to_thread(node.close)
        server.stop()


def _fresh_vpc(node: AwsNode, hub: str) -> None:
    """Wipe moto and give the node a new VPC (the next daemon started uses it)."""
    request = urllib.request.Request(f"{hub}/moto-api/reset", method="POST", data=b"")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=60):
        pass
    node.vpc = Vpc.create(node.ec2)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _moto_floor(url: str, vpc: Vpc, count: int, threads: int = 32) -> float:
    """The same EC2 calls as ``count`` lifecycles (token lookup, launch, terminate), made directly.

    moto serialises much of its work (one Python process), so this is the floor
    under any client's concurrent wall time; the daemon's is compared with it.
    It goes through the fault proxy as the daemon's calls do (not the relay).
    """
    clients = [ec2_client(url) for _ in range(threads)]

    def one(i: int) -> None:
        ec2, sid = clients[i % threads], uuid.uuid4().hex
        live = ["pending", "running", "stopping", "stopped"]
        ec2.describe_instances(
            Filters=[{"Name": "tag:floor", "Values": [sid]}, {"Name": "instance-state-name", "Values": live}]
        )
        launched = ec2.run_instances(
            ImageId=AMI,
            MinCount=1,
            MaxCount=1,
            InstanceType="m6a.large",
            SubnetId=vpc.subnet_id,
            UserData="#cloud-config\n" + "x" * 4000,
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "floor", "Value": sid}]}],
        )
        ec2.terminate_instances(InstanceIds=[launched["Instances"][0]["InstanceId"]])

    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(count)))
        return time.perf_counter() - started
    finally:
        for ec2 in clients:
            ec2.close()


async def _loopback_only() -> dict[str, Any]:
    """No namespaces: create and delete through the provider, moto and the fault proxy on loopback."""
    from caa_provider_aws.config import AwsConfig
    from caa_provider_aws.plugin import boto3_port
    from caa_provider_aws.provider import AwsProvider

    from cloud_api_adaptor.provider import CreateRequest, InstanceSpec
    from cloud_api_adaptor.testing.faultproxy import FaultProxy

    server, hub = serve_moto("127.0.0.1")
    ec2 = ec2_client(hub)
    try:
        vpc = await asyncio.to_thread(Vpc.create, ec2)
        with FaultProxy(hub) as proxy:
            config = AwsConfig(
                image_id=AMI,
                region=REGION,
                subnet_id=vpc.subnet_id,
                security_group_ids=(vpc.sg_id,),
                endpoint_url=proxy.url,
                access_key_id="testing",
                secret_access_key="testing",
                imds_disabled=True,
            )
            provider = AwsProvider(config, ec2_factory=boto3_port)
            try:

                async def create_delete() -> float:
                    sid = uuid.uuid4().hex
                    request = CreateRequest(
                        name=f"podvm-bench-{sid[:8]}",
                        sandbox_id=sid,
                        token=sid,
                        spec=InstanceSpec(instance_type="m6a.large", image=AMI),
                        userdata="#cloud-config\n",
                        tags={"caa.confidentialcontainers.org/sandbox": sid},
                    )
                    started = time.perf_counter()
                    instance = await provider.create_instance(request)
                    await provider.delete_instance(instance.id)
                    return time.perf_counter() - started

                await create_delete()  # one-time calls (DescribeImages)
                before = Counter(proxy.counts())
                one = await create_delete()
                per_lifecycle = calls_since(Counter(proxy.counts()), before)
                before = Counter(proxy.counts())
                started = time.perf_counter()
                await asyncio.gather(*(create_delete() for _ in range(CONCURRENT)))
                wall = time.perf_counter() - started
                calls = calls_since(Counter(proxy.counts()), before)
            finally:
                await provider.aclose()
        return {
            "mode": "loopback only (not root): provider create+delete, no daemon",
            "lifecycle_calls": per_lifecycle,
            "lifecycle_calls_total": sum(per_lifecycle.values()),
            "lifecycle_calls_target": 3,
            "concurrent": CONCURRENT,
            "single_create_delete_s": round(one, 3),
            "concurrent_wall_s": round(wall, 3),
            "concurrent_vs_single": round(wall / one, 2),
            "concurrent_calls_per_lifecycle": round(sum(calls.values()) / CONCURRENT, 2),
            "instances_left": len(vpc.live()),
        }
    finally:
        ec2.close()
        server.stop()
