"""What the fake refuses in an ``instances.insert`` body, worded as Compute Engine words it.

The instance name pattern, label grammar and count (instance and boot disk),
metadata size, an unknown machine type, Confidential VM on a machine series that
cannot run it (or without ``onHostMaintenance=TERMINATE``), pd-standard on series
that cannot attach it, unknown images and networks.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import ApiError

Json = dict[str, Any]

LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
METADATA_VALUE_LIMIT = 262144
METADATA_TOTAL_LIMIT = 512 * 1024
#: machine series that run each Confidential VM type (the fake's own, narrower than the provider's table)
CVM_SERIES = {"SEV": {"n2d", "c2d", "c3d"}, "SEV_SNP": {"n2d"}, "TDX": {"c3"}}
NO_PD_STANDARD = {"c3", "c3d"}


def check_instance(compute: Any, body: Json) -> None:
    """Refuse (400/404) an insert body Compute Engine would refuse."""

    def invalid(field_: str, why: str) -> ApiError:
        return ApiError(400, "invalid", f"Invalid value for field 'resource.{field_}': {why}")

    name = str(body.get("name", ""))
    if not re.fullmatch(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?", name):
        raise invalid("name", f"'{name}'. Must be a match of regex '(?:[a-z](?:[-a-z0-9]{{0,61}}[a-z0-9])?)'")
    for where, labels in (
        ("labels", body.get("labels", {})),
        *(
            (f"disks[{i}].initializeParams.labels", d.get("initializeParams", {}).get("labels", {}))
            for i, d in enumerate(body.get("disks", []))
        ),
    ):
        if len(labels) > 64:
            raise invalid(where, f"{len(labels)} labels; at most 64 are allowed.")
        for key, value in labels.items():
            if not LABEL_KEY.fullmatch(key):
                raise invalid(where, f"Label key '{key}' violates format constraints.")
            if not LABEL_VALUE.fullmatch(value):
                raise invalid(where, f"Label value '{value}' violates format constraints.")
    items = body.get("metadata", {}).get("items", [])
    if sum(len(i.get("key", "")) + len(i.get("value", "").encode()) for i in items) >= METADATA_TOTAL_LIMIT:
        raise invalid("metadata", "The total size of all metadata keys and values must be less than 512 KB.")
    for item in items:
        if len(item.get("value", "").encode()) > METADATA_VALUE_LIMIT:
            raise invalid("metadata", f"Metadata value for key '{item['key']}' exceeds 262144 bytes.")
    machine = str(body.get("machineType", "")).rsplit("/", 1)[-1]
    if machine not in compute.machine_types:
        raise invalid(
            "machineType",
            f"'{body.get('machineType')}'. Machine type with name '{machine}' "
            f"does not exist in zone '{compute.zone}'.",
        )
    series = machine.split("-", 1)[0]
    cvm = body.get("confidentialInstanceConfig")
    if cvm:
        kind = cvm.get("confidentialInstanceType") or "SEV"
        if series not in CVM_SERIES.get(kind, set()):
            raise invalid(
                "confidentialInstanceConfig",
                f"Confidential Instance Config type {kind} is not supported for machine type {machine}.",
            )
        if body.get("scheduling", {}).get("onHostMaintenance") != "TERMINATE":
            raise invalid(
                "scheduling.onHostMaintenance",
                "Instances with Confidential Compute enabled must have onHostMaintenance set to TERMINATE.",
            )
    for i, disk in enumerate(body.get("disks", [])):
        disk_type = str(disk.get("initializeParams", {}).get("diskType", "")).rsplit("/", 1)[-1]
        if disk_type == "pd-standard" and series in NO_PD_STANDARD:
            raise invalid(
                f"disks[{i}].initializeParams.diskType",
                f"pd-standard is not supported for machine type {machine}.",
            )
        compute._image(disk.get("initializeParams", {}).get("sourceImage", ""))
    for nic in body.get("networkInterfaces", []):
        net = str(nic.get("subnetwork") or nic.get("network", "")).rsplit("/", 1)[-1]
        if net not in compute.subnetworks:
            raise ApiError(
                404,
                "notFound",
                f"The resource 'projects/{compute.project}/global/networks/{net}' was not found",
            )
