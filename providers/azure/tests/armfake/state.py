"""The fake ARM's state: VMs and the NICs, disks and public IPs their PUT creates, and operations.

It behaves like ARM where the provider depends on it, and refuses like ARM:
- a VM PUT creates the VM (``Creating``) and, from ``networkInterfaceConfigurations``
  and ``osDisk``, its NIC, public IP and OS disk, each remembering its ``deleteOption``;
  a repeated PUT of the same name converges on the same VM (no second one);
- operations stay ``InProgress`` for ``op_polls`` polls (or until released when
  ``hold_operations``) and answer ``Retry-After``; a create can be made to fail;
- a VM DELETE (202) removes the VM when its operation ends, and with it exactly the
  resources declared ``deleteOption=Delete`` (the others stay, as on Azure: leaks show);
- tag grammar, VM name, userData size, size/region, CVM capability and core quota are
  checked on PUT with ARM's codes.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import ArmError, not_found

Json = dict[str, Any]

SUBSCRIPTION = "5d3b8a4e-2c1f-4f3a-9b7e-0a1b2c3d4e5f"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
GROUP = "caa-pods"
LOCATION = "eastus"
VM_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9_])?")
TAG_FORBIDDEN = re.compile(r"[<>%&\\?/]")

#: (name, family, vCPUs, memory GB, GPUs, ConfidentialComputingType)
DEFAULT_SKUS = [
    ("Standard_DC2as_v5", "standardDCASv5Family", 2, 8, 0, "SNP"),
    ("Standard_DC4as_v5", "standardDCASv5Family", 4, 16, 0, "SNP"),
    ("Standard_DC8as_v5", "standardDCASv5Family", 8, 32, 0, "SNP"),
    ("Standard_DC2es_v6", "standardDCESv6Family", 2, 8, 0, "TDX"),
    ("Standard_D2as_v5", "standardDASv5Family", 2, 8, 0, ""),
    ("Standard_NCC40ads_H100_v5", "standardNCCadsH100v5Family", 40, 320, 1, "SNP"),
]


def _image_of(props: Json) -> Any:
    return (props.get("storageProfile") or {}).get("imageReference")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Operation:
    id: str
    kind: str  # "create" | "delete"
    vm: str
    polls_left: int
    status: str = "InProgress"
    error: Json | None = None
    started: str = field(default_factory=_now)


class ArmState:
    """One subscription with one resource group, one VNet/subnet, an NSG and a gallery image."""

    def __init__(self, subnet_prefix: str = "10.20.0.0/24") -> None:
        self.subscription = SUBSCRIPTION
        self.group = GROUP
        self.location = LOCATION
        self.subnet_prefix = subnet_prefix
        self.lock = threading.RLock()
        self.vms: dict[str, Json] = {}
        self.userdata_of: dict[str, str] = {}
        self.nics: dict[str, Json] = {}
        self.disks: dict[str, Json] = {}
        self.public_ips: dict[str, Json] = {}
        self.operations: dict[str, Operation] = {}
        self.images: dict[str, Json] = {}
        self.skus = [self._sku(*row) for row in DEFAULT_SKUS]
        #: quota name -> limit (usage is computed from the live VMs)
        self.quotas: dict[str, float] = {
            "cores": 350.0,
            "standardDCASv5Family": 100.0,
            "standardDCESv6Family": 100.0,
        }
        self.op_polls = 2
        #: the Retry-After (whole seconds, as ARM sends) of operation answers ...
        self.retry_after = "1"
        #: ... or, when set, ``retry-after-ms`` instead (the SDK honours both; tests poll fast)
        self.retry_after_ms: int | None = None
        self.hold_operations = False
        #: the next create operations end Failed with these (code, message)
        self.fail_creates: list[tuple[str, str]] = []
        self.created_total = 0
        self.subnet_id = self.network_id("virtualNetworks", "caa-vnet") + "/subnets/pods"
        self.nsg_id = self.network_id("networkSecurityGroups", "caa-nsg")
        self.public_ip_pool = ipaddress.ip_network("20.0.0.0/16").hosts()

    # -- ids ---------------------------------------------------------------------------------------------

    @property
    def group_id(self) -> str:
        return f"/subscriptions/{self.subscription}/resourceGroups/{self.group}"

    def vm_id(self, name: str) -> str:
        return f"{self.group_id}/providers/Microsoft.Compute/virtualMachines/{name}"

    def network_id(self, kind: str, name: str) -> str:
        return f"{self.group_id}/providers/Microsoft.Network/{kind}/{name}"

    def add_image(self, gallery: str = "caa-gallery", image: str = "podvm", version: str = "1.0.0") -> str:
        gallery_id = f"{self.group_id}/providers/Microsoft.Compute/galleries/{gallery}"
        image_id = f"{gallery_id}/images/{image}/versions/{version}"
        self.images[image_id.lower()] = {
            "id": image_id,
            "name": version,
            "type": "Microsoft.Compute/galleries/images/versions",
            "location": self.location,
            "properties": {
                "provisioningState": "Succeeded",
                "publishingProfile": {"targetRegions": [{"name": "East US", "regionalReplicaCount": 1}]},
                "storageProfile": {"osDiskImage": {"sizeInGB": 30}},
            },
        }
        return image_id

    def _sku(self, name: str, family: str, vcpus: int, memory: int, gpus: int, cc: str) -> Json:
        caps = [
            {"name": "vCPUs", "value": str(vcpus)},
            {"name": "MemoryGB", "value": str(memory)},
            {"name": "GPUs", "value": str(gpus)},
            {"name": "HyperVGenerations", "value": "V2"},
        ]
        if cc:
            caps.append({"name": "ConfidentialComputingType", "value": cc})
        return {
            "resourceType": "virtualMachines",
            "name": name,
            "tier": "Standard",
            "size": name.removeprefix("Standard_"),
            "family": family,
            "locations": [self.location],
            "locationInfo": [{"location": self.location, "zones": ["1", "2", "3"]}],
            "capabilities": caps,
            "restrictions": [],
        }

    # -- views for tests ---------------------------------------------------------------------------------

    def live(self, **tags: str) -> list[Json]:
        """VMs (any state) carrying every ``tags`` name=value."""
        with self.lock:
            return [
                dict(vm) for vm in self.vms.values() if all(vm["tags"].get(k) == v for k, v in tags.items())
            ]

    def leftovers(self) -> dict[str, list[str]]:
        """Everything that exists: what a full cleanup leaves is ``{}``."""
        with self.lock:
            found = {
                "virtualMachines": [v["name"] for v in self.vms.values()],
                "networkInterfaces": [n["name"] for n in self.nics.values()],
                "disks": [d["name"] for d in self.disks.values()],
                "publicIPAddresses": [p["name"] for p in self.public_ips.values()],
            }
        return {k: v for k, v in found.items() if v}

    def userdata(self, name: str) -> str:
        with self.lock:
            return base64.b64decode(self.userdata_of[name.lower()]).decode()

    def private_ip(self, name: str) -> str:
        with self.lock:
            vm = self.vms[name.lower()]
            nic_id = vm["properties"]["networkProfile"]["networkInterfaces"][0]["id"]
            nic = self.nics[nic_id.rsplit("/", 1)[-1].lower()]
            return str(nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"])

    def release_operations(self) -> None:
        with self.lock:
            self.hold_operations = False

    # -- VM PUT ------------------------------------------------------------------------------------------

    def put_vm(self, name: str, body: Json) -> tuple[int, Json, Operation]:
        with self.lock:
            self._check_put(name, body)
            existing = self.vms.get(name.lower())
            if existing is not None:
                return self._reput(existing, body)
            props = body.get("properties") or {}
            self._check_capacity(props)
            vm = self._new_vm(name, body)
            self.vms[name.lower()] = vm
            self.created_total += 1
            op = self._operation("create", name)
            return 201, vm, op

    def _reput(self, vm: Json, body: Json) -> tuple[int, Json, Operation]:
        state = vm["properties"]["provisioningState"]
        if state == "Deleting":
            raise ArmError(
                409,
                "OperationNotAllowed",
                f"Operation 'PUT' is not allowed on VM '{vm['name']}' since the VM is marked for deletion. "
                "You can only retry the Delete operation (or wait for an ongoing one to complete).",
            )
        old, new = vm["properties"], body.get("properties") or {}
        for what, before, after in [
            ("imageReference", old["storageProfile"].get("imageReference"), _image_of(new)),
            (
                "securityProfile.securityType",
                (old.get("securityProfile") or {}).get("securityType"),
                (new.get("securityProfile") or {}).get("securityType"),
            ),
        ]:
            if before != after:
                raise ArmError(409, "PropertyChangeNotAllowed", f"Changing property '{what}' is not allowed.")
        vm["tags"] = dict(body.get("tags") or {})
        if state == "Failed":
            vm["properties"]["provisioningState"] = "Creating"
        running = [
            o for o in self.operations.values() if o.vm == vm["name"].lower() and o.status == "InProgress"
        ]
        op = running[0] if running else self._operation("create", vm["name"], polls=0)
        if not running and state == "Succeeded":
            vm["properties"]["provisioningState"] = "Updating"
        return 200, vm, op

    def _check_put(self, name: str, body: Json) -> None:
        if not VM_NAME.fullmatch(name):
            raise ArmError(
                400,
                "InvalidParameter",
                f"The VM name '{name}' is invalid: Linux VM names are 1-64 characters of letters, numbers, "
                "'-', '_' and '.', and cannot begin with '_' or end with '.' or '-'.",
            )
        if str(body.get("location", "")).lower() != self.location:
            raise ArmError(400, "LocationNotAvailableForResourceType", f"location {body.get('location')!r}")
        tags = body.get("tags") or {}
        if len(tags) > 50:
            raise ArmError(400, "InvalidTemplate", f"The resource has {len(tags)} tags; the limit is 50.")
        for key, value in tags.items():
            if TAG_FORBIDDEN.search(key):
                raise ArmError(
                    400,
                    "InvalidTagNameCharacters",
                    f"The tag names '{key}' have reserved characters '<,>,%,&,\\,?,/'",
                )
            if len(key) > 512 or len(str(value)) > 256:
                raise ArmError(
                    400, "InvalidTagNameLength", f"Tag '{key[:40]}' exceeds the name/value length limit"
                )
            if key.lower().startswith(("microsoft", "azure", "windows")):
                raise ArmError(400, "InvalidTagName", f"The tag name '{key}' uses a reserved prefix")
        props = body.get("properties") or {}
        userdata = props.get("userData", "")
        if len(userdata) > 65536:
            raise ArmError(
                400,
                "InvalidParameter",
                "The value of parameter userData is too long. Its length after base64 encoding "
                "must not exceed 65536 bytes.",
            )
        try:
            base64.b64decode(userdata, validate=True)
        except ValueError:
            raise ArmError(
                400, "InvalidParameter", "The value of parameter userData is not valid base64."
            ) from None
        linux = (props.get("osProfile") or {}).get("linuxConfiguration") or {}
        keys = (linux.get("ssh") or {}).get("publicKeys") or []
        if linux.get("disablePasswordAuthentication") and not keys:
            raise ArmError(
                400,
                "InvalidParameter",
                "Authentication using either SSH or by user name and password must be enabled "
                "in Linux profile.",
            )
        image = (props.get("storageProfile") or {}).get("imageReference") or {}
        image_id = str(image.get("id") or image.get("communityGalleryImageId") or "")
        if image_id.lower() not in self.images:
            raise ArmError(
                404,
                "GalleryImageNotFound",
                f"The gallery image {image_id} is not available in {self.location}.",
            )
        subnet = self._subnet_of(props)
        if subnet.lower() != self.subnet_id.lower():
            raise ArmError(
                400, "InvalidResourceReference", f"Resource {subnet} referenced by the VM was not found."
            )

    def _subnet_of(self, props: Json) -> str:
        for nic in (props.get("networkProfile") or {}).get("networkInterfaceConfigurations") or []:
            for ipc in (nic.get("properties") or {}).get("ipConfigurations") or []:
                return str(((ipc.get("properties") or {}).get("subnet") or {}).get("id", ""))
        return ""

    def _sku_named(self, size: str) -> Json:
        for sku in self.skus:
            if sku["name"].lower() == size.lower():
                return sku
        raise ArmError(
            409,
            "SkuNotAvailable",
            f"The requested VM size '{size}' is currently not available in location '{self.location}'. "
            "Please try another size or deploy to a different location or different zone.",
        )

    def _check_capacity(self, props: Json) -> None:
        size = str((props.get("hardwareProfile") or {}).get("vmSize", ""))
        sku = self._sku_named(size)
        caps = {c["name"]: c["value"] for c in sku["capabilities"]}
        security = (props.get("securityProfile") or {}).get("securityType")
        if security == "ConfidentialVM" and "ConfidentialComputingType" not in caps:
            raise ArmError(
                400,
                "InvalidParameter",
                f"The VM size '{size}' is not supported for creation of VMs with security type "
                "ConfidentialVM.",
            )
        os_disk = (props.get("storageProfile") or {}).get("osDisk") or {}
        encryption = ((os_disk.get("managedDisk") or {}).get("securityProfile") or {}).get(
            "securityEncryptionType"
        )
        if security == "ConfidentialVM" and not encryption:
            raise ArmError(
                400, "InvalidParameter", "securityEncryptionType is required for a ConfidentialVM OS disk."
            )
        needed = int(caps["vCPUs"])
        for quota in ("cores", sku["family"]):
            limit = self.quotas.get(quota)
            if limit is None:
                continue
            used = self._cores_used(quota)
            if used + needed > limit:
                raise ArmError(
                    409,
                    "OperationNotAllowed",
                    "Operation could not be completed as it results in exceeding approved "
                    f"{quota} Cores quota. "
                    f"Additional details - Deployment Model: Resource Manager, Location: {self.location}, "
                    f"Current Limit: {limit:g}, Current Usage: {used}, Additional Required: {needed}, "
                    f"(Minimum) New Limit Required: {used + needed:g}. Submit a request for Quota increase.",
                )

    def _cores_used(self, quota: str) -> int:
        used = 0
        for vm in self.vms.values():
            sku = self._sku_named(vm["properties"]["hardwareProfile"]["vmSize"])
            if quota == "cores" or sku["family"] == quota:
                used += int({c["name"]: c["value"] for c in sku["capabilities"]}["vCPUs"])
        return used

    def usages(self) -> list[Json]:
        with self.lock:
            return [
                {
                    "name": {"value": quota, "localizedValue": quota},
                    "currentValue": self._cores_used(quota),
                    "limit": int(limit),
                    "unit": "Count",
                }
                for quota, limit in self.quotas.items()
            ]

    def _new_vm(self, name: str, body: Json) -> Json:
        props = body["properties"]
        self.userdata_of[name.lower()] = props.get("userData", "")
        network = props["networkProfile"]
        nic_refs = []
        for config in network.get("networkInterfaceConfigurations") or []:
            nic_refs.append(self._new_nic(name, config))
        os_disk = dict(props["storageProfile"]["osDisk"])
        disk_name = os_disk.get("name") or f"{name}_OsDisk_1_{uuid.uuid4().hex}"
        disk_id = f"{self.group_id}/providers/Microsoft.Compute/disks/{disk_name}"
        self.disks[disk_name.lower()] = {
            "name": disk_name,
            "id": disk_id,
            "owner": name.lower(),
            "deleteOption": os_disk.get("deleteOption", "Detach"),
        }
        os_disk.update({"name": disk_name, "osType": "Linux"})
        os_disk["managedDisk"] = {**os_disk.get("managedDisk", {}), "id": disk_id}
        out_props = {k: v for k, v in props.items() if k != "userData"}
        out_props.update(
            {
                "vmId": str(uuid.uuid4()),
                "provisioningState": "Creating",
                "timeCreated": _now(),
                "storageProfile": {**props["storageProfile"], "osDisk": os_disk},
                "networkProfile": {**network, "networkInterfaces": nic_refs},
            }
        )
        return {
            "name": name,
            "id": self.vm_id(name),
            "type": "Microsoft.Compute/virtualMachines",
            "location": self.location,
            "tags": dict(body.get("tags") or {}),
            "properties": out_props,
        }

    def _new_nic(self, vm: str, config: Json) -> Json:
        props = config.get("properties") or {}
        nic_name = f"{vm}-{config['name']}-{uuid.uuid4().hex[:5]}"
        ip_configs = []
        for ipc in props.get("ipConfigurations") or []:
            ipc_props = ipc.get("properties") or {}
            out: Json = {
                "privateIPAddress": self._allocate_ip(),
                "privateIPAllocationMethod": "Dynamic",
                "subnet": {"id": ipc_props["subnet"]["id"]},
                "primary": True,
                "provisioningState": "Succeeded",
            }
            public = ipc_props.get("publicIPAddressConfiguration")
            if public:
                ip_name = f"{vm}-{public['name']}-{uuid.uuid4().hex[:5]}"
                ip_id = self.network_id("publicIPAddresses", ip_name)
                self.public_ips[ip_name.lower()] = {
                    "name": ip_name,
                    "id": ip_id,
                    "owner": vm.lower(),
                    "deleteOption": (public.get("properties") or {}).get("deleteOption", "Detach"),
                    "ipAddress": str(next(self.public_ip_pool)),
                }
                out["publicIPAddress"] = {"id": ip_id}
            ip_configs.append({"name": ipc["name"], "properties": out})
        nic_id = self.network_id("networkInterfaces", nic_name)
        self.nics[nic_name.lower()] = {
            "name": nic_name,
            "id": nic_id,
            "owner": vm.lower(),
            "deleteOption": props.get("deleteOption", "Detach"),
            "properties": {"ipConfigurations": ip_configs, "primary": True, "provisioningState": "Succeeded"},
        }
        return {
            "id": nic_id,
            "properties": {"primary": True, "deleteOption": props.get("deleteOption", "Detach")},
        }

    def _allocate_ip(self) -> str:
        network = ipaddress.ip_network(self.subnet_prefix)
        taken = {
            c["properties"]["privateIPAddress"]
            for n in self.nics.values()
            for c in n["properties"]["ipConfigurations"]
        }
        for i, host in enumerate(network.hosts()):
            if i < 3:  # Azure reserves the first addresses of a subnet
                continue
            if str(host) not in taken and host != network.broadcast_address - 1:
                return str(host)
        raise ArmError(400, "SubnetIsFull", f"Subnet {self.subnet_id} has no free addresses")

    # -- GET / DELETE / list -----------------------------------------------------------------------------

    def get_vm(self, name: str) -> Json:
        with self.lock:
            vm = self.vms.get(name.lower())
            if vm is None:
                raise not_found("Microsoft.Compute/virtualMachines", name, self.group)
            return vm

    def list_vms(self) -> list[Json]:
        with self.lock:
            return list(self.vms.values())

    def delete_vm(self, name: str) -> Operation | None:
        """The delete operation, or None when there is nothing to delete (ARM answers 204)."""
        with self.lock:
            vm = self.vms.get(name.lower())
            if vm is None:
                return None
            for op in self.operations.values():
                if op.vm == name.lower() and op.kind == "delete" and op.status == "InProgress":
                    return op
            vm["properties"]["provisioningState"] = "Deleting"
            for op in self.operations.values():  # a create still running is superseded
                if op.vm == name.lower() and op.kind == "create" and op.status == "InProgress":
                    op.status, op.error = "Canceled", {"code": "OperationPreempted", "message": "deleted"}
            return self._operation("delete", name)

    def resource(self, kind: str, name: str) -> Json:
        table = {"networkInterfaces": self.nics, "publicIPAddresses": self.public_ips}[kind]
        with self.lock:
            found = table.get(name.lower())
            if found is None:
                raise not_found(f"Microsoft.Network/{kind}", name, self.group)
            return found

    # -- operations --------------------------------------------------------------------------------------

    def _operation(self, kind: str, vm: str, polls: int | None = None) -> Operation:
        op = Operation(str(uuid.uuid4()), kind, vm.lower(), self.op_polls if polls is None else polls)
        self.operations[op.id] = op
        return op

    def poll(self, op_id: str) -> Operation:
        with self.lock:
            op = self.operations.get(op_id)
            if op is None:
                raise ArmError(404, "NotFound", f"operation {op_id} not found")
            if op.status != "InProgress" or self.hold_operations:
                return op
            if op.polls_left > 0:
                op.polls_left -= 1
                return op
            self._finish(op)
            return op

    def _finish(self, op: Operation) -> None:
        vm = self.vms.get(op.vm)
        if op.kind == "delete":
            if vm is not None:
                self._remove(op.vm)
            op.status = "Succeeded"
            return
        if vm is None:
            op.status, op.error = "Failed", {"code": "NotFound", "message": "the VM is gone"}
            return
        if self.fail_creates:
            code, message = self.fail_creates.pop(0)
            vm["properties"]["provisioningState"] = "Failed"
            op.status, op.error = "Failed", {"code": code, "message": message}
            return
        vm["properties"]["provisioningState"] = "Succeeded"
        op.status = "Succeeded"

    def _remove(self, name: str) -> None:
        del self.vms[name]
        self.userdata_of.pop(name, None)
        for table in (self.nics, self.disks, self.public_ips):
            for key in [k for k, r in table.items() if r["owner"] == name and r["deleteOption"] == "Delete"]:
                del table[key]
            for r in table.values():
                if r["owner"] == name:
                    r["owner"] = ""  # detached: it stays, as on Azure

    def all_operations(self) -> Iterator[Operation]:
        with self.lock:
            yield from list(self.operations.values())
