"""The fake's state: instances, zone operations, request ids, quotas, IP addresses, tags.

Behaves and refuses like Compute Engine where the provider depends on it:
- ``instances.insert`` with a ``requestId`` seen before answers with the original
  operation and creates nothing; a name taken in the zone is a 409 ``alreadyExists``;
- operations stay ``RUNNING`` for ``op_polls`` observations (``get`` or ``wait``), or
  until released while ``hold_operations`` is set; then ``DONE``;
- a delete leaves the instance ``STOPPING`` until its operation is done, then 404;
- quota (``CPUS``, series ``*_CPUS``, ``IN_USE_ADDRESSES``) is charged on insert:
  exceeding it finishes the operation at once with ``QUOTA_EXCEEDED``; machine types in
  ``exhausted`` do the same with ``ZONE_RESOURCE_POOL_EXHAUSTED``;
- label grammar, the instance name pattern, metadata value size, Confidential VM
  machine series and pd-standard on c3 are refused with 400 ``invalid``.
"""

from __future__ import annotations

import copy
import datetime
import ipaddress
import itertools
import re
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError
from .rules import check_instance

Json = dict[str, Any]
API = "https://www.googleapis.com/compute/v1"

UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "-07:00"


def machine_type(name: str, cpus: int, memory_mb: int, gpus: int = 0) -> Json:
    found: Json = {
        "kind": "compute#machineType",
        "name": name,
        "guestCpus": cpus,
        "memoryMb": memory_mb,
        "id": str(secrets.randbelow(10**12)),
        "isSharedCpu": name.startswith("e2-micro"),
    }
    if gpus:
        found["accelerators"] = [{"guestAcceleratorType": "nvidia-tesla-a100", "guestAcceleratorCount": gpus}]
    return found


@dataclass
class Operation:
    body: Json
    polls_left: int
    done_event: threading.Event = field(default_factory=threading.Event)
    on_done: Any = None  # callable run once when the operation finishes


class FakeCompute:
    """One project and zone of Compute Engine, thread-safe."""

    def __init__(
        self, project: str = "caa-test", zone: str = "us-central1-a", subnet: str = "198.51.100.0/24"
    ) -> None:
        self.project, self.zone, self.region = project, zone, zone.rsplit("-", 1)[0]
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.op_polls = 2
        self.wait_block = 0.05
        self.hold_operations = False
        self.page_size = 500
        self.exhausted: set[str] = set()
        self.instances: dict[str, Json] = {}
        self.operations: dict[str, Operation] = {}
        self.request_ids: dict[str, str] = {}
        self.created_total = 0
        self.machine_types = {
            m["name"]: m
            for m in (
                machine_type("e2-medium", 2, 4096),
                machine_type("n2d-standard-2", 2, 8192),
                machine_type("n2d-standard-4", 4, 16384),
                machine_type("n2d-standard-8", 8, 32768),
                machine_type("c2d-standard-2", 2, 8192),
                machine_type("c3-standard-4", 4, 16384),
                machine_type("a2-highgpu-1g", 12, 87040, gpus=1),
            )
        }
        self.images: dict[tuple[str, str], Json] = {}
        self.networks: dict[str, Json] = {}
        self.subnetworks: dict[str, Json] = {}
        self.quotas: dict[str, Json] = {
            m: {"metric": m, "limit": 1000.0, "usage": 0.0}
            for m in ("CPUS", "N2D_CPUS", "C3_CPUS", "IN_USE_ADDRESSES", "INSTANCES")
        }
        self.tag_keys: dict[str, Json] = {}
        self.tag_values: dict[str, Json] = {}
        self.tag_bindings: list[Json] = []
        self._ids = itertools.count(1000000000000000000)
        self._nat = itertools.count(1)
        self.add_network("default", subnet)

    # -- world set-up ------------------------------------------------------------------------------------

    def add_network(self, name: str, cidr: str) -> None:
        self.networks[name] = {
            "kind": "compute#network",
            "name": name,
            "id": self._id(),
            "selfLink": f"{API}/projects/{self.project}/global/networks/{name}",
            "autoCreateSubnetworks": False,
        }
        self.subnetworks[name] = {
            "kind": "compute#subnetwork",
            "name": name,
            "id": self._id(),
            "ipCidrRange": cidr,
            "region": self._url(f"regions/{self.region}"),
            "network": self.networks[name]["selfLink"],
            "gatewayAddress": str(ipaddress.ip_network(cidr).network_address + 1),
        }

    def add_image(self, name: str, disk_gb: int = 10, project: str | None = None, family: str = "") -> None:
        project = project or self.project
        self.images[(project, name)] = {
            "kind": "compute#image",
            "name": name,
            "id": self._id(),
            "diskSizeGb": str(disk_gb),
            "status": "READY",
            "family": family,
            "selfLink": f"{API}/projects/{project}/global/images/{name}",
        }

    def add_tag(self, key: str, value: str) -> str:
        with self.lock:
            key_name = next((k for k, v in self.tag_keys.items() if v["shortName"] == key), "")
            if not key_name:
                key_name = f"tagKeys/{secrets.randbelow(10**12)}"
                self.tag_keys[key_name] = {
                    "name": key_name,
                    "shortName": key,
                    "parent": f"projects/{self.project}",
                    "namespacedName": f"{self.project}/{key}",
                }
            value_name = f"tagValues/{secrets.randbelow(10**12)}"
            self.tag_values[value_name] = {
                "name": value_name,
                "shortName": value,
                "parent": key_name,
                "namespacedName": f"{self.project}/{key}/{value}",
            }
            return value_name

    def _id(self) -> str:
        return str(next(self._ids))

    def _url(self, rest: str) -> str:
        return f"{API}/projects/{self.project}/{rest}"

    # -- operations --------------------------------------------------------------------------------------

    def _new_operation(self, kind: str, target: str, target_id: str, on_done: Any) -> Operation:
        name = f"operation-{secrets.token_hex(6)}-{secrets.token_hex(4)}"
        body = {
            "kind": "compute#operation",
            "id": self._id(),
            "name": name,
            "operationType": kind,
            "progress": 0,
            "status": "RUNNING",
            "insertTime": now(),
            "startTime": now(),
            "targetId": target_id,
            "targetLink": self._url(f"zones/{self.zone}/instances/{target}"),
            "selfLink": self._url(f"zones/{self.zone}/operations/{name}"),
            "user": "fake@caa-test",
            "zone": self._url(f"zones/{self.zone}"),
        }
        op = Operation(body, self.op_polls, on_done=on_done)
        self.operations[name] = op
        return op

    def _finish(self, op: Operation, error: Json | None = None) -> None:
        if op.body["status"] == "DONE":
            return
        op.body.update(status="DONE", progress=100, endTime=now())
        if error is not None:
            op.body["error"] = {"errors": [error]}
            op.body["httpErrorStatusCode"] = 403 if error["code"] == "QUOTA_EXCEEDED" else 503
            op.body["httpErrorMessage"] = (
                "FORBIDDEN" if error["code"] == "QUOTA_EXCEEDED" else "SERVICE UNAVAILABLE"
            )
        elif op.on_done is not None:
            op.on_done()
        op.done_event.set()
        self.changed.notify_all()

    def _observe(self, name: str) -> Operation:
        op = self.operations.get(name)
        if op is None:
            raise ApiError(
                404,
                "notFound",
                f"The resource '{self._url(f'zones/{self.zone}/operations/{name}')}' was not found",
            )
        if op.body["status"] != "DONE" and not self.hold_operations:
            op.polls_left -= 1
            if op.polls_left <= 0:
                self._finish(op)
        return op

    def get_operation(self, name: str) -> Json:
        with self.lock:
            return copy.deepcopy(self._observe(name).body)

    def wait_operation(self, name: str) -> Json:
        """Like ``zoneOperations.wait``: returns when done, or after ``wait_block`` seconds as it stands."""
        with self.lock:
            op = self._observe(name)
            if op.body["status"] != "DONE":
                self.changed.wait(self.wait_block)
            return copy.deepcopy(op.body)

    def release_operations(self) -> None:
        """Finish every running operation now (after ``hold_operations``)."""
        with self.lock:
            self.hold_operations = False
            for op in list(self.operations.values()):
                self._finish(op)

    # -- instances ---------------------------------------------------------------------------------------

    def insert(self, body: Json, request_id: str) -> Json:
        with self.lock:
            if request_id:
                if not UUID.fullmatch(request_id) or set(request_id) <= {"0", "-"}:
                    raise ApiError(
                        400,
                        "invalid",
                        f"Invalid value for field 'requestId': '{request_id}'. "
                        "The request ID must be a valid UUID other than the zero UUID.",
                    )
                if request_id in self.request_ids:
                    return copy.deepcopy(self.operations[self.request_ids[request_id]].body)
            self._check_instance(body)
            name = body["name"]
            if name in self.instances:
                raise ApiError(
                    409,
                    "alreadyExists",
                    f"The resource '{self._url(f'zones/{self.zone}/instances/{name}')}' already exists",
                )
            machine = self.machine_types[body["machineType"].rsplit("/", 1)[-1]]
            instance = self._materialise(body, machine)
            charges = self._charges(body, machine)
            short = next(
                (m for m, n in charges.items() if self.quotas[m]["usage"] + n > self.quotas[m]["limit"]), ""
            )
            op = self._new_operation("insert", name, instance["id"], None)
            if request_id:
                self.request_ids[request_id] = op.body["name"]
            if short:
                q = self.quotas[short]
                self._finish(
                    op,
                    {
                        "code": "QUOTA_EXCEEDED",
                        "message": f"Quota '{short}' exceeded.  Limit: {q['limit']:g} "
                        f"in region {self.region}.",
                    },
                )
                return copy.deepcopy(op.body)
            if machine["name"] in self.exhausted:
                self._finish(
                    op,
                    {
                        "code": "ZONE_RESOURCE_POOL_EXHAUSTED",
                        "message": f"The zone '{self._url(f'zones/{self.zone}')}' does not have enough "
                        "resources "
                        "available to fulfill the request.  Try a different zone, or try again later.",
                    },
                )
                return copy.deepcopy(op.body)
            for metric, amount in charges.items():
                self.quotas[metric]["usage"] += amount
            instance["_charges"] = charges
            self.instances[name] = instance
            self.created_total += 1
            op.on_done = lambda: self._started(name)
            return copy.deepcopy(op.body)

    def _charges(self, body: Json, machine: Json) -> dict[str, float]:
        cpus = float(machine["guestCpus"])
        series = machine["name"].split("-", 1)[0].upper()
        charges = {"CPUS": cpus, "INSTANCES": 1.0}
        if f"{series}_CPUS" in self.quotas:
            charges[f"{series}_CPUS"] = cpus
        if any(nic.get("accessConfigs") for nic in body.get("networkInterfaces", [])):
            charges["IN_USE_ADDRESSES"] = 1.0
        return charges

    def _started(self, name: str) -> None:
        instance = self.instances.get(name)
        if instance is not None and instance["status"] == "PROVISIONING":
            instance["status"] = "RUNNING"
            instance["lastStartTimestamp"] = now()

    def _materialise(self, body: Json, machine: Json) -> Json:
        instance = copy.deepcopy(body)
        instance_id = self._id()
        network = body["networkInterfaces"][0]
        subnet = self.subnetworks[network.get("subnetwork", network["network"]).rsplit("/", 1)[-1]]
        nic: Json = {
            "kind": "compute#networkInterface",
            "name": "nic0",
            "network": self.networks[subnet["name"]]["selfLink"],
            "subnetwork": self._url(f"regions/{self.region}/subnetworks/{subnet['name']}"),
            "networkIP": self._allocate_ip(subnet),
            "stackType": network.get("stackType", "IPV4_ONLY"),
            "fingerprint": "abcdef0123A=",
        }
        if network.get("accessConfigs"):
            n = next(self._nat)
            nic["accessConfigs"] = [
                {**ac, "kind": "compute#accessConfig", "natIP": f"203.0.113.{n % 250 + 1}"}
                for ac in network["accessConfigs"]
            ]
        disk = body["disks"][0]
        params = disk.get("initializeParams", {})
        image = self._image(params.get("sourceImage", ""))
        size = max(int(params.get("diskSizeGb") or 0), int(image["diskSizeGb"]))
        instance.update(
            kind="compute#instance",
            id=instance_id,
            creationTimestamp=now(),
            status="PROVISIONING",
            machineType=self._url(f"zones/{self.zone}/machineTypes/{machine['name']}"),
            zone=self._url(f"zones/{self.zone}"),
            selfLink=self._url(f"zones/{self.zone}/instances/{body['name']}"),
            networkInterfaces=[nic],
            labelFingerprint="abcdef0123A=",
            fingerprint="abcdef0123A=",
            cpuPlatform="AMD Milan" if "confidentialInstanceConfig" in body else "Intel Cascade Lake",
            startRestricted=False,
            deletionProtection=False,
            disks=[
                {
                    "kind": "compute#attachedDisk",
                    "type": "PERSISTENT",
                    "mode": "READ_WRITE",
                    "boot": True,
                    "autoDelete": bool(disk.get("autoDelete")),
                    "deviceName": "persistent-disk-0",
                    "index": 0,
                    "diskSizeGb": str(size),
                    "interface": "SCSI",
                    "source": self._url(f"zones/{self.zone}/disks/{body['name']}"),
                }
            ],
        )
        instance["metadata"] = {
            "kind": "compute#metadata",
            "fingerprint": "abcdef0123A=",
            "items": body.get("metadata", {}).get("items", []),
        }
        return instance

    def _allocate_ip(self, subnet: Json) -> str:
        network = ipaddress.ip_network(subnet["ipCidrRange"])
        taken = {nic["networkIP"] for inst in self.instances.values() for nic in inst["networkInterfaces"]}
        for host in itertools.islice(network.hosts(), 1, None):  # the first host is the gateway
            if str(host) not in taken and host != network.broadcast_address - 1:
                return str(host)
        raise ApiError(503, "resourceExhausted", f"IP space of {subnet['name']} is exhausted")

    def _image(self, url: str) -> Json:
        parts = url.split("/")
        if "projects" not in parts or "images" not in parts:
            raise ApiError(
                400,
                "invalid",
                f"Invalid value for field 'resource.disks[0].initializeParams.sourceImage': '{url}'.",
            )
        project = parts[parts.index("projects") + 1]
        name = parts[-1]
        if "family" in parts:
            found = [i for (p, _), i in self.images.items() if p == project and i.get("family") == name]
        else:
            found = [self.images[(project, name)]] if (project, name) in self.images else []
        if not found:
            raise ApiError(
                404, "notFound", f"The resource 'projects/{project}/global/images/{name}' was not found"
            )
        return found[0]

    def _check_instance(self, body: Json) -> None:
        check_instance(self, body)

    def get_instance(self, name: str) -> Json:
        with self.lock:
            if name not in self.instances:
                raise ApiError(
                    404,
                    "notFound",
                    f"The resource '{self._url(f'zones/{self.zone}/instances/{name}')}' was not found",
                )
            return self._public(self.instances[name])

    @staticmethod
    def _public(instance: Json) -> Json:
        return {k: copy.deepcopy(v) for k, v in instance.items() if not k.startswith("_")}

    def delete(self, name: str, request_id: str) -> Json:
        with self.lock:
            if request_id and request_id in self.request_ids:
                return copy.deepcopy(self.operations[self.request_ids[request_id]].body)
            instance = self.instances.get(name)
            if instance is None:
                raise ApiError(
                    404,
                    "notFound",
                    f"The resource '{self._url(f'zones/{self.zone}/instances/{name}')}' was not found",
                )
            instance["status"] = "STOPPING"
            op = self._new_operation("delete", name, instance["id"], lambda: self._gone(name, instance["id"]))
            if request_id:
                self.request_ids[request_id] = op.body["name"]
            return copy.deepcopy(op.body)

    def _gone(self, name: str, instance_id: str) -> None:
        instance = self.instances.get(name)
        if instance is None or instance["id"] != instance_id:
            return
        del self.instances[name]
        for metric, amount in instance.get("_charges", {}).items():
            self.quotas[metric]["usage"] -= amount
        self.tag_bindings = [
            b for b in self.tag_bindings if not b["parent"].endswith(f"/instances/{instance_id}")
        ]

    def list_instances(self, filter_: str, page_token: str, max_results: int) -> Json:
        terms = parse_filter(filter_)
        with self.lock:
            names = sorted(
                n for n, i in self.instances.items() if all(i.get("labels", {}).get(k) == v for k, v in terms)
            )
            start = int(page_token or 0)
            size = min(max_results or self.page_size, self.page_size)
            page = names[start : start + size]
            answer: Json = {
                "kind": "compute#instanceList",
                "id": f"projects/{self.project}/zones/{self.zone}/instances",
                "items": [self._public(self.instances[n]) for n in page],
                "selfLink": self._url(f"zones/{self.zone}/instances"),
            }
            if start + size < len(names):
                answer["nextPageToken"] = str(start + size)
            return answer

    # -- views for tests ---------------------------------------------------------------------------------

    def live(self, **labels: str) -> list[Json]:
        with self.lock:
            return [
                self._public(i)
                for i in self.instances.values()
                if all(i.get("labels", {}).get(k) == v for k, v in labels.items())
            ]

    def userdata(self, name: str) -> str:
        import base64

        items = {i["key"]: i["value"] for i in self.get_instance(name)["metadata"]["items"]}
        return base64.b64decode(items["user-data"]).decode()


_TERM = re.compile(r'\(?\s*labels\.([a-z][a-z0-9_-]*)\s*=\s*"([^"]*)"\s*\)?')


def parse_filter(text: str) -> list[tuple[str, str]]:
    """``(labels.k = "v") AND (labels.k2 = "v2")``; anything else is refused as the API refuses it."""
    if not text.strip():
        return []
    terms = []
    for part in re.split(r"\s+AND\s+", text.strip()):
        found = _TERM.fullmatch(part.strip())
        if found is None:
            raise ApiError(400, "invalid", f"Invalid list filter expression '{text}'.")
        terms.append((found.group(1), found.group(2)))
    return terms


def merged(base: Mapping[str, Any], **changes: Any) -> Json:
    return {**base, **changes}
