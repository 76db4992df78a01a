"""A stateful fake of the PowerVS API (one workspace), served next to the shared IAM and Global Search fakes.

It behaves and refuses like the API where the provider depends on it:
- every create body is validated against the published PVMInstanceCreate model
  (``pvm_instance_create.schema.json``: required serverName, imageID, memory,
  processors, procType enum, property types), user data must be base64 of at
  most 63 KiB, server names at most 47 characters and unique in the workspace
  (409), image, network and SSH key must exist, user tags must fit the tag grammar;
- every request needs the IAM bearer token and the workspace CRN in the ``CRN``
  header (403 otherwise);
- a new instance is ``BUILD`` for ``build_reads`` reads, then ``ACTIVE``;
  ``next_outcome`` makes the next one end ``ERROR`` or stay ``BUILD`` forever;
- addresses: a ``fixed`` network reports its IP on the instance; a ``dynamic``
  one leaves it to the network's DHCP server, whose lease for the instance's
  MAC appears after ``lease_reads`` reads of the server;
- a delete removes the instance (404 afterwards).

Not modelled: volumes, replicants, placement groups, SAP profiles, shared
processor pools, capacity per system type, console, snapshots, the async job
API, any lag between create and listing.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import itertools
import json
import threading
import uuid
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import jsonschema  # type: ignore[import-untyped]
from caa_provider_ibmcloud.testing.iam import ACCOUNT
from caa_provider_ibmcloud.testing.platform import Doc, FakePlatform, check_tag
from caa_provider_ibmcloud.testing.server import FakeServer, Refusal, Reply, Request

USERDATA_BASE64_LIMIT = 63 * 1024
MAX_NAME = 47


def create_schema() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("pvm_instance_create.schema.json").read_text()
    return dict(json.loads(text))


def power_error(status: int, message: str) -> Refusal:
    return Refusal(status, "powervs_error", message)


@dataclass
class PvmInstance:
    shape: dict[str, Any]
    user_data: str
    address: str
    mac: str
    outcome: str = "ACTIVE"
    reads: int = 0


@dataclass
class FakePowerVs:
    platform: FakePlatform
    zone: str = "dal12"
    subnet: str = "10.150.0.0/24"
    network_type: str = "fixed"
    build_reads: int = 2
    lease_reads: int = 1
    next_outcome: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.workspace = str(uuid.uuid4())
        self.crn = f"crn:v1:bluemix:public:power-iaas:{self.zone}:a/{ACCOUNT}:{self.workspace}::"
        self.image_id = str(uuid.uuid4())
        self.network_id = str(uuid.uuid4())
        self.dhcp_id = str(uuid.uuid4())
        self.ssh_key = "podvm-key"
        self.instances: dict[str, PvmInstance] = {}
        self.creates = 0
        self.dhcp_reads = 0
        self._schema = create_schema()
        self._macs = itertools.count(1)

    def install(self, server: FakeServer) -> None:
        base = f"/pcloud/v1/cloud-instances/{self.workspace}"
        for method, path, handler in [
            ("GET", "", self._workspace),
            ("GET", "/pvm-instances", self._list),
            ("POST", "/pvm-instances", self._create),
            ("GET", "/pvm-instances/(?P<id>[^/]+)", self._get),
            ("DELETE", "/pvm-instances/(?P<id>[^/]+)", self._delete),
            ("GET", "/services/dhcp", self._dhcp_list),
            ("GET", "/services/dhcp/(?P<id>[^/]+)", self._dhcp_get),
            ("GET", "/images/(?P<id>[^/]+)", self._image),
            ("GET", "/networks/(?P<id>[^/]+)", self._network),
        ]:
            server.route(method, base + path, self._checked(handler))

    # -- the test's view -----------------------------------------------------------------------------------

    def live_ids(self) -> set[str]:
        with self.lock:
            return set(self.instances)

    def named(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(i.shape) for i in self.instances.values() if i.shape["serverName"] == name]

    def tagged(self, tag: str) -> list[str]:
        with self.lock:
            return [i for i, inst in self.instances.items() if tag in inst.shape.get("userTags", [])]

    def user_data(self, instance_id: str) -> str:
        with self.lock:
            return self.instances[instance_id].user_data

    def address(self, instance_id: str) -> str:
        with self.lock:
            return self.instances[instance_id].address

    def remove_now(self, instance_id: str) -> None:
        with self.lock:
            self._drop(instance_id)

    # -- handlers ------------------------------------------------------------------------------------------

    def _checked(self, handler: Any) -> Any:
        def serve(request: Request) -> Reply:
            if request.headers.get("crn") != self.crn:
                raise power_error(
                    403, f"CRN header {request.headers.get('crn')!r} does not name this workspace"
                )
            with self.lock:
                return handler(request)  # type: ignore[no-any-return]

        return serve

    def _workspace(self, request: Request) -> Reply:
        used_cpu = sum(float(i.shape["processors"]) for i in self.instances.values())
        used_mem = sum(float(i.shape["memory"]) for i in self.instances.values())
        return Reply(
            200,
            {
                "cloudInstanceID": self.workspace,
                "region": self.zone,
                "enabled": True,
                "limits": {"instances": 50, "processors": 40, "memory": 400},
                "usage": {"instances": len(self.instances), "processors": used_cpu, "memory": used_mem},
            },
        )

    def _list(self, request: Request) -> Reply:
        return Reply(200, {"pvmInstances": [self._reference(i) for i in self.instances.values()]})

    def _reference(self, inst: PvmInstance) -> dict[str, Any]:
        keep = (
            "pvmInstanceID",
            "serverName",
            "status",
            "imageID",
            "memory",
            "processors",
            "procType",
            "sysType",
            "creationDate",
            "networks",
            "href",
            "crn",
            "diskSize",
            "osType",
        )
        return {k: inst.shape[k] for k in keep if k in inst.shape}

    def _create(self, request: Request) -> Reply:
        body = request.json()
        try:
            jsonschema.validate(body, self._schema)
        except jsonschema.ValidationError as exc:
            raise power_error(400, f"invalid PVMInstanceCreate: {exc.message}") from exc
        name = body["serverName"]
        if len(name) > MAX_NAME:
            raise power_error(400, f"serverName {name!r} is longer than {MAX_NAME} characters")
        if any(i.shape["serverName"] == name for i in self.instances.values()):
            raise power_error(409, f"a server named {name} already exists in this workspace")
        if body["imageID"] != self.image_id:
            raise power_error(404, f"image {body['imageID']} does not exist")
        if [n["networkID"] for n in body.get("networks", [])] != [self.network_id]:
            raise power_error(404, f"network {body.get('networks')} does not exist")
        if body.get("keyPairName", self.ssh_key) != self.ssh_key:
            raise power_error(404, f"ssh key {body['keyPairName']} does not exist")
        user_data = body.get("userData", "")
        if len(user_data) > USERDATA_BASE64_LIMIT:
            raise power_error(400, f"userData is {len(user_data)} bytes; at most {USERDATA_BASE64_LIMIT}")
        try:
            decoded = base64.b64decode(user_data, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise power_error(400, f"userData is not base64: {exc}") from exc
        tags = [check_tag(t) for t in body.get("userTags", [])]
        self.creates += 1
        inst = self._launch(body, decoded, tags)
        return Reply(201, [self._reference(inst)])

    def _launch(self, body: dict[str, Any], user_data: str, tags: list[str]) -> PvmInstance:
        instance_id = str(uuid.uuid4())
        number = next(self._macs)
        mac = f"fa:16:3e:00:{number // 256:02x}:{number % 256:02x}"
        address = self._allocate()
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        crn = f"{self.crn.removesuffix('::')}:pvm-instance:{instance_id}"
        shape = {
            "pvmInstanceID": instance_id,
            "serverName": body["serverName"],
            "href": f"/pcloud/v1/cloud-instances/{self.workspace}/pvm-instances/{instance_id}",
            "crn": crn,
            "status": "BUILD",
            "imageID": body["imageID"],
            "memory": body["memory"],
            "processors": body["processors"],
            "procType": body["procType"],
            "sysType": body.get("sysType", "s922"),
            "osType": "rhel",
            "diskSize": 120,
            "creationDate": now,
            "userTags": tags,
            "networkIDs": [self.network_id],
            "networks": [
                {"networkID": self.network_id, "macAddress": mac, "type": self.network_type, "ipAddress": ""}
            ],
        }
        outcome = self.next_outcome.pop(0) if self.next_outcome else "ACTIVE"
        inst = PvmInstance(shape, user_data, address, mac, outcome)
        self.instances[instance_id] = inst
        self.platform.register(Doc(crn, body["serverName"], "pvm-instance", "power-iaas", now, set(tags)))
        return inst

    def _allocate(self) -> str:
        import ipaddress

        used = {i.address for i in self.instances.values()}
        for host in itertools.islice(ipaddress.IPv4Network(self.subnet).hosts(), 3, None):
            if str(host) not in used:
                return str(host)
        raise power_error(400, "no free address in the network")

    def _get(self, request: Request) -> Reply:
        assert request.match is not None
        inst = self.instances.get(request.match.group("id"))
        if inst is None:
            raise power_error(404, f"pvm-instance {request.match.group('id')} does not exist")
        inst.reads += 1
        if inst.shape["status"] == "BUILD" and inst.reads > self.build_reads and inst.outcome != "BUILD":
            inst.shape["status"] = inst.outcome
            if inst.outcome == "ERROR":
                inst.shape["fault"] = {"code": 500, "message": "deployment failed: no host capacity"}
            elif self.network_type == "fixed":
                inst.shape["networks"][0]["ipAddress"] = inst.address
                inst.shape["networks"][0]["externalIP"] = ""
        return Reply(200, inst.shape)

    def _delete(self, request: Request) -> Reply:
        assert request.match is not None
        if request.match.group("id") not in self.instances:
            raise power_error(404, f"pvm-instance {request.match.group('id')} does not exist")
        self._drop(request.match.group("id"))
        return Reply(200, {})

    def _drop(self, instance_id: str) -> None:
        inst = self.instances.pop(instance_id, None)
        if inst is not None:
            self.platform.forget(inst.shape["crn"])

    def _dhcp_list(self, request: Request) -> Reply:
        return Reply(
            200,
            [{"id": self.dhcp_id, "network": {"id": self.network_id, "name": "pods"}, "status": "ACTIVE"}],
        )

    def _dhcp_get(self, request: Request) -> Reply:
        assert request.match is not None
        if request.match.group("id") != self.dhcp_id:
            raise power_error(404, "dhcp server not found")
        self.dhcp_reads += 1
        leases = []
        if self.dhcp_reads > self.lease_reads:
            leases = [
                {"instanceIP": i.address, "instanceMacAddress": i.mac}
                for i in self.instances.values()
                if i.shape["status"] == "ACTIVE" and self.network_type != "fixed"
            ]
        return Reply(200, {"id": self.dhcp_id, "network": {"id": self.network_id}, "leases": leases})

    def _image(self, request: Request) -> Reply:
        assert request.match is not None
        if request.match.group("id") != self.image_id:
            raise power_error(404, "image not found")
        return Reply(
            200,
            {
                "imageID": self.image_id,
                "name": "podvm-ppc64le",
                "state": "active",
                "specifications": {"architecture": "ppc64"},
            },
        )

    def _network(self, request: Request) -> Reply:
        assert request.match is not None
        if request.match.group("id") != self.network_id:
            raise power_error(404, "network not found")
        return Reply(200, {"networkID": self.network_id, "name": "pods", "type": "vlan"})


__all__ = ["FakePowerVs", "PvmInstance"]
