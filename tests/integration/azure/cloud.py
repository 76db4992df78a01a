"""The fake ARM (``providers/azure/tests/armfake``) as the daemon-level tests' Azure.

One fake per test: a listener on 127.0.0.1 is the test's view and the fault proxy's
upstream, a second on the stand's root-side address is what the daemon in the node
namespace reaches (its certificate names that address; the daemon trusts the fake's
test CA through ``REQUESTS_CA_BUNDLE``).  The fake hands out private IPs from the
stand's VM subnet, so the test can boot a pod VM at the NIC's address with the
``userData`` the daemon sent.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

# the fake lives with the provider's own tests
_FAKE_DIR = Path(__file__).resolve().parents[3] / "providers" / "azure" / "tests"
if str(_FAKE_DIR) not in sys.path:
    sys.path.insert(0, str(_FAKE_DIR))

from armfake.server import FakeArm  # noqa: E402
from armfake.state import ArmState  # noqa: E402

from ..cloudstand.podvm import PodVm  # noqa: E402
from ..cloudstand.stand import SHARED_VM_RANGE  # noqa: E402

SIZE = "Standard_DC2as_v5"

__all__ = ["SIZE", "AzureCloud", "FakeArm", "boot_pod_vm"]


class AzureCloud:
    """A fresh fake subscription for one test, with the views the test needs."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="caa-azure-arm-", dir="/tmp"))
        # the lower half of the stand's VM subnet, far from the node's address at .254
        # (benchmarks make one pod VM answer on all of it)
        self.fake = FakeArm(self.directory, ArmState(subnet_prefix=str(SHARED_VM_RANGE)))
        self.fake.state.retry_after_ms = 200
        self.url = self.fake.serve("127.0.0.1")

    @property
    def arm(self) -> ArmState:
        return self.fake.state

    def of_sandbox(self, sandbox_id: str) -> list[dict[str, Any]]:
        """VMs (any state) tagged with this sandbox."""
        return list(self.arm.live(**{"caa-sandbox": sandbox_id}))

    def daemon_env(self, endpoint: str, authority: str, node: str, cluster: str) -> dict[str, str]:
        """The Azure provider's keys (the Go version's names) for a daemon using this subscription."""
        state = self.arm
        return {
            "CLOUD_PROVIDER": "azure",
            "AZURE_SUBSCRIPTION_ID": state.subscription,
            "AZURE_REGION": state.location,
            "AZURE_RESOURCE_GROUP": state.group,
            "AZURE_SUBNET_ID": state.subnet_id,
            "AZURE_NSG_ID": state.nsg_id,
            "AZURE_IMAGE_ID": next(iter(state.images.values()))["id"],
            "AZURE_INSTANCE_SIZE": SIZE,
            "AZURE_CLIENT_ID": self.fake.client_id,
            "AZURE_CLIENT_SECRET": self.fake.client_secret,
            "AZURE_TENANT_ID": self.fake.tenant,
            "AZURE_AUTHORITY_HOST": authority,
            "AZURE_RESOURCE_MANAGER_ENDPOINT": endpoint,
            "REQUESTS_CA_BUNDLE": str(self.fake.ca.ca_file),
            "NODE_NAME": node,
            "CLUSTER_ID": cluster,
            "LOG_LEVEL": "info",
        }

    def close(self) -> None:
        self.fake.close()
        import shutil

        shutil.rmtree(self.directory, ignore_errors=True)


async def boot_pod_vm(vm: PodVm, cloud: AzureCloud, instance: dict[str, Any]) -> None:
    """Boot ``vm`` as ``instance``: its NIC's private IP and the userData the daemon sent."""
    name = str(instance["name"])
    userdata = await asyncio.to_thread(cloud.arm.userdata, name)
    await vm.boot(cloud.arm.private_ip(name), userdata)
