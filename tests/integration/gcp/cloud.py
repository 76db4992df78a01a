"""The fake Compute Engine (``providers/gcp/tests/gcpfake``) as the daemon-level tests' GCP.

One fake per test: a listener on 127.0.0.1 is the test's view and the fault
proxy's upstream, a second on the stand's root-side address is what the daemon
in the node namespace reaches.  The fake hands out internal IPs from the stand's
VM subnet, so the test can boot a pod VM at the instance's ``networkIP`` with the
``user-data`` metadata value the daemon sent.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

# the fake lives with the provider's own tests
_FAKE_DIR = Path(__file__).resolve().parents[3] / "providers" / "gcp" / "tests"
if str(_FAKE_DIR) not in sys.path:
    sys.path.insert(0, str(_FAKE_DIR))

from caa_provider_gcp.labels import encode_value  # noqa: E402
from gcpfake.server import FakeGcp  # noqa: E402

from ..cloudstand.podvm import PodVm  # noqa: E402
from ..cloudstand.stand import VM_SUBNET  # noqa: E402

IMAGE = "podvm-image"
MACHINE_TYPE = "n2d-standard-2"

__all__ = ["IMAGE", "MACHINE_TYPE", "FakeGcp", "GcpCloud", "boot_pod_vm"]


class GcpCloud:
    """A fresh fake GCP project for one test, with the views the test needs."""

    def __init__(self) -> None:
        self.fake = FakeGcp()
        self.fake.compute.add_network("default", str(VM_SUBNET))
        self.fake.compute.add_image(IMAGE, 10)
        self.url = self.fake.serve("127.0.0.1")

    @property
    def compute(self) -> Any:
        return self.fake.compute

    def of_sandbox(self, sandbox_id: str) -> list[dict[str, Any]]:
        """Instances (any status) labelled with this sandbox."""
        return list(self.compute.live(caa_sandbox=encode_value(sandbox_id)))

    def live(self) -> list[dict[str, Any]]:
        return list(self.compute.live())

    def daemon_env(self, endpoint: str, node: str, cluster: str) -> dict[str, str]:
        """The GCP provider's keys (the Go version's names) for a daemon using this project."""
        return {
            "CLOUD_PROVIDER": "gcp",
            "GCP_CREDENTIALS": self.fake.key_json(endpoint),
            "GCP_PROJECT_ID": self.compute.project,
            "GCP_ZONE": self.compute.zone,
            "GCP_NETWORK": "default",
            "GCP_SUBNETWORK": "default",
            "PODVM_IMAGE_NAME": IMAGE,
            "GCP_MACHINE_TYPE": MACHINE_TYPE,
            "GCP_CONFIDENTIAL_TYPE": "SEV_SNP",
            "GCP_DISK_TYPE": "pd-balanced",
            "GCP_COMPUTE_ENDPOINT": endpoint,
            "NODE_NAME": node,
            "CLUSTER_ID": cluster,
            "LOG_LEVEL": "info",
        }

    def close(self) -> None:
        self.fake.close()


async def boot_pod_vm(vm: PodVm, cloud: GcpCloud, instance: dict[str, Any]) -> None:
    """Boot ``vm`` as ``instance``: its networkIP and the user-data its metadata holds."""
    userdata = await asyncio.to_thread(cloud.compute.userdata, str(instance["name"]))
    await vm.boot(str(instance["networkInterfaces"][0]["networkIP"]), userdata)
