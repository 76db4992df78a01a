"""A stateful fake of the IBM Cloud VPC API (``/v1``), driven by the real ibm-vpc SDK.

It behaves and refuses like the API where the provider depends on it:
- every create body is validated by round-tripping it through the SDK's own
  model class (``InstancePrototypeInstanceByImageInstanceByImageInstanceByNetworkInterface``):
  a missing required property or an unknown one is refused (400), as are enum
  values outside the SDK's enums, names outside the VPC name grammar or over 63
  characters, user data over 64 KiB, references to images, profiles, subnets,
  security groups, keys, VPCs, zones or dedicated hosts that do not exist, an
  image whose architecture differs from the profile's, TDX or secure boot on a
  profile that does not offer it, and user tags outside the tag grammar;
- names are unique per region for instances and for volumes (400
  ``validation_unique_failed``), deleting instances included;
- a new instance is ``pending`` with every interface at ``0.0.0.0`` for the
  first ``pending_reads`` reads, then ``running`` with addresses from its
  subnet; ``fail_next`` makes the next one end ``failed``;
- a delete makes the instance ``deleting`` (its boot volume goes with it) for
  ``deleting_reads`` reads, then it is gone (404);
- the ``version`` and ``generation=2`` query parameters are required.

Not modelled: pagination of instance lists, instance actions (stop, reboot),
network attachments, floating IPs, reserved IPs, snapshots, resource group
checks, the instance initialization (keys, user data are kept only for tests).
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from caa_provider_ibmcloud.testing.platform import Doc, FakePlatform, check_tag
from caa_provider_ibmcloud.testing.server import FakeServer, Refusal, Reply, Request

NAME = re.compile(r"^-?([a-z]|[a-z][-a-z0-9]*[a-z0-9]|[0-9][-a-z0-9]*([a-z]|[-a-z][-a-z0-9]*[a-z0-9]))$")
USERDATA_LIMIT = 64 * 1024
UNSET = "0.0.0.0"
ACCOUNT = "a/fakeaccount"


def _profile(name: str, vcpus: int, gib: int, arch: str, modes: list[str], gpus: int = 0) -> dict[str, Any]:
    shape: dict[str, Any] = {
        "name": name,
        "family": name.split("-", maxsplit=1)[0],
        "vcpu_count": {"type": "fixed", "value": vcpus},
        "memory": {"type": "fixed", "value": gib},
        "vcpu_architecture": {"type": "fixed", "value": arch},
        "confidential_compute_modes": {"default": "disabled", "type": "enum", "values": modes},
        "secure_boot_modes": {
            "default": False,
            "type": "enum",
            "values": [False, True] if arch == "amd64" else [False],
        },
    }
    if gpus:
        shape["gpu_count"] = {"type": "fixed", "value": gpus}
    return shape


DEFAULT_PROFILES = [
    _profile("bx2-2x8", 2, 8, "amd64", ["disabled"]),
    _profile("bx3dc-2x10", 2, 10, "amd64", ["disabled", "tdx"]),
    _profile("bx3dc-4x20", 4, 20, "amd64", ["disabled", "tdx"]),
    _profile("bz2e-2x8", 2, 8, "s390x", ["disabled"]),
    _profile("gx3-16x80x1l4", 16, 80, "amd64", ["disabled"], gpus=1),
]


@dataclass
class FakeInstance:
    shape: dict[str, Any]
    user_data: str
    addresses: list[str]
    volume_id: str
    reads: int = 0
    deleting_reads: int = 0
    ready: bool = False
    fail: bool = False


@dataclass
class FakeVpc:
    """The VPC API's state: one region, one zone, one VPC, subnets, and what the provider creates."""

    platform: FakePlatform
    region: str = "us-south"
    zone: str = "us-south-1"
    subnet_cidr: str = "10.240.0.0/24"
    first_host: int = 4
    pending_reads: int = 2
    deleting_reads: int = 1
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    dedicated_hosts: set[str] = field(default_factory=set)
    fail_next: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.vpc_id = f"r006-{uuid.uuid4()}"
        self.subnet_id = f"0717-{uuid.uuid4()}"
        self.security_group_id = f"r006-{uuid.uuid4()}"
        self.key_id = f"r006-{uuid.uuid4()}"
        self.instances: dict[str, FakeInstance] = {}
        self.volumes: dict[str, dict[str, Any]] = {}
        self.creates = 0
        self._ids = itertools.count(1)
        if not self.profiles:
            self.profiles = {p["name"]: p for p in DEFAULT_PROFILES}
        if not self.images:
            self.add_image("amd64")
            self.add_image("s390x")

    def add_image(self, arch: str) -> str:
        image_id = f"r006-{uuid.uuid4()}"
        self.images[image_id] = {
            "id": image_id,
            "name": f"podvm-{arch}",
            "status": "available",
            "operating_system": {"architecture": arch, "name": f"ubuntu-24-04-{arch}"},
        }
        return image_id

    def image_of(self, arch: str) -> str:
        return next(i for i, s in self.images.items() if s["operating_system"]["architecture"] == arch)

    def install(self, server: FakeServer) -> None:
        routes = [
            ("GET", "/v1/instances", self._list),
            ("POST", "/v1/instances", self._create),
            ("GET", "/v1/instances/(?P<id>[^/]+)", self._get),
            ("DELETE", "/v1/instances/(?P<id>[^/]+)", self._delete),
            ("GET", "/v1/volumes/(?P<id>[^/]+)", self._volume),
            (
                "GET",
                "/v1/instance/profiles/(?P<id>[^/]+)",
                self._lookup(lambda: self.profiles, "instance_profile"),
            ),
            ("GET", "/v1/images/(?P<id>[^/]+)", self._lookup(lambda: self.images, "image")),
            ("GET", "/v1/subnets/(?P<id>[^/]+)", self._lookup(self._subnets, "subnet")),
            (
                "GET",
                "/v1/vpcs/(?P<id>[^/]+)",
                self._lookup(lambda: {self.vpc_id: {"id": self.vpc_id}}, "vpc"),
            ),
            ("GET", "/v1/security_groups/(?P<id>[^/]+)", self._lookup(self._groups, "security_group")),
            ("GET", "/v1/keys/(?P<id>[^/]+)", self._lookup(lambda: {self.key_id: {"name": "podvm"}}, "key")),
            ("GET", "/v1/regions/(?P<region>[^/]+)/zones/(?P<id>[^/]+)", self._zone),
        ]
        for method, pattern, handler in routes:
            server.route(method, pattern, self._versioned(handler))

    # -- the test's view -----------------------------------------------------------------------------------

    def live(self) -> list[dict[str, Any]]:
        """Instances not being deleted."""
        with self.lock:
            return [dict(i.shape) for i in self.instances.values() if i.shape["status"] != "deleting"]

    def live_ids(self) -> set[str]:
        return {str(i["id"]) for i in self.live()}

    def user_data(self, instance_id: str) -> str:
        with self.lock:
            return self.instances[instance_id].user_data

    def addresses(self, instance_id: str) -> list[str]:
        with self.lock:
            return list(self.instances[instance_id].addresses)

    def volume_tags(self, instance_id: str) -> set[str]:
        with self.lock:
            volume = self.volumes.get(self.instances[instance_id].volume_id, {})
            return {str(t) for t in volume.get("user_tags", [])}

    def tagged(self, tag: str, live_only: bool = True) -> list[str]:
        """Instances whose boot volume or own tags carry ``tag`` (created ever, while they exist)."""
        with self.lock:
            found = []
            for iid, inst in self.instances.items():
                if live_only and inst.shape["status"] == "deleting":
                    continue
                if tag in self.volume_tags(iid) | self.platform.tags_of(inst.shape["crn"]):
                    found.append(iid)
            return found

    def remove_now(self, instance_id: str) -> None:
        """The instance vanishes (deleted by someone else)."""
        with self.lock:
            self._drop(instance_id)

    # -- routing helpers -----------------------------------------------------------------------------------

    def _versioned(self, handler: Any) -> Any:
        def serve(request: Request) -> Reply:
            if not request.query.get("version") or request.query.get("generation") != "2":
                raise Refusal(
                    400, "bad_request", "the version and generation=2 query parameters are required"
                )
            with self.lock:
                self._expire_deleted()
                return handler(request)  # type: ignore[no-any-return]

        return serve

    def _lookup(self, table: Any, kind: str) -> Any:
        def serve(request: Request) -> Reply:
            key = request.match.group("id") if request.match else ""
            found = table().get(key)
            if found is None:
                raise Refusal(404, "not_found", f"{kind} {key} not found")
            return Reply(200, {"id": key, **found})

        return serve

    def _subnets(self) -> dict[str, dict[str, Any]]:
        return {
            self.subnet_id: {
                "name": "podvm-subnet",
                "ipv4_cidr_block": self.subnet_cidr,
                "vpc": {"id": self.vpc_id},
                "zone": {"name": self.zone},
            }
        }

    def _groups(self) -> dict[str, dict[str, Any]]:
        return {self.security_group_id: {"name": "podvm-sg", "vpc": {"id": self.vpc_id}}}

    def _zone(self, request: Request) -> Reply:
        assert request.match is not None
        if request.match.group("region") != self.region or request.match.group("id") != self.zone:
            raise Refusal(404, "not_found", f"zone {request.match.group('id')} not found")
        return Reply(200, {"name": self.zone, "status": "available", "region": {"name": self.region}})

    # -- instances -----------------------------------------------------------------------------------------

    def _list(self, request: Request) -> Reply:
        name = request.query.get("name")
        found = [i.shape for i in self.instances.values() if name is None or i.shape["name"] == name]
        return Reply(200, {"instances": [self._view(s["id"], count=False) for s in found], "limit": 50})

    def _get(self, request: Request) -> Reply:
        assert request.match is not None
        return Reply(200, self._view(request.match.group("id")))

    def _view(self, instance_id: str, count: bool = True) -> dict[str, Any]:
        inst = self.instances.get(instance_id)
        if inst is None:
            raise Refusal(404, "instance_not_found", f"Instance not found: {instance_id}")
        if count:
            self._advance(inst)
        shape = dict(inst.shape)
        addresses = inst.addresses if inst.ready else [UNSET] * len(inst.addresses)
        nics = [
            dict(n, primary_ip={"address": a})
            for n, a in zip(inst.shape["network_interfaces"], addresses, strict=True)
        ]
        shape["network_interfaces"] = nics
        shape["primary_network_interface"] = nics[0]
        if inst.shape["status"] == "deleting" and inst.deleting_reads >= self.deleting_reads:
            self._drop(instance_id)
        return shape

    def _advance(self, inst: FakeInstance) -> None:
        status = inst.shape["status"]
        if status == "deleting":
            inst.deleting_reads += 1
            return
        inst.reads += 1
        if status in ("pending", "starting") and inst.reads > self.pending_reads:
            if inst.fail:
                inst.shape["status"] = "failed"
                inst.shape["status_reasons"] = [{"code": "cannot_start_capacity", "message": "no capacity"}]
            else:
                inst.shape["status"] = "running"
                inst.ready = True

    def _create(self, request: Request) -> Reply:
        body = request.json()
        validate_prototype(body)
        self._check_references(body)
        name = body["name"]
        if any(i.shape["name"] == name for i in self.instances.values()):
            raise Refusal(400, "validation_unique_failed", f"Provided Name ({name}) is not unique", "name")
        volume = body.get("boot_volume_attachment", {}).get("volume", {})
        volume_name = volume.get("name") or f"boot-{uuid.uuid4().hex[:12]}"
        if any(v["name"] == volume_name for v in self.volumes.values()):
            raise Refusal(
                400, "validation_unique_failed", f"Volume name ({volume_name}) is not unique", "name"
            )
        self.creates += 1
        return Reply(
            201, self._launch(body, volume_name, [check_tag(t) for t in volume.get("user_tags", [])])
        )

    def _launch(self, body: dict[str, Any], volume_name: str, volume_tags: list[str]) -> dict[str, Any]:
        number = next(self._ids)
        instance_id = f"0717_{uuid.uuid4()}"
        volume_id = f"r006-{uuid.uuid4()}"
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        crn = f"crn:v1:bluemix:public:is:{self.zone}:{ACCOUNT}::instance:{instance_id}"
        volume_crn = f"crn:v1:bluemix:public:is:{self.zone}:{ACCOUNT}::volume:{volume_id}"
        nic_bodies = [body["primary_network_interface"], *body.get("network_interfaces", [])]
        nics = [
            {"id": f"0717-nic-{number}-{n}", "name": f"eth{n}", "subnet": nic["subnet"]}
            for n, nic in enumerate(nic_bodies)
        ]
        shape: dict[str, Any] = {
            "id": instance_id,
            "crn": crn,
            "href": f"/v1/instances/{instance_id}",
            "name": body["name"],
            "status": "pending",
            "status_reasons": [],
            "created_at": now,
            "profile": body["profile"],
            "image": body["image"],
            "zone": body["zone"],
            "vpc": body.get("vpc", {"id": self.vpc_id}),
            "confidential_compute_mode": body.get("confidential_compute_mode", "disabled"),
            "enable_secure_boot": body.get("enable_secure_boot", False),
            "network_interfaces": nics,
            "boot_volume_attachment": {"volume": {"id": volume_id, "crn": volume_crn, "name": volume_name}},
        }
        if "placement_target" in body:
            shape["placement_target"] = body["placement_target"]
        fail, self.fail_next = self.fail_next > 0, max(0, self.fail_next - 1)
        self.instances[instance_id] = FakeInstance(
            shape, body.get("user_data", ""), [self._allocate() for _ in nics], volume_id, fail=fail
        )
        self.volumes[volume_id] = {
            "id": volume_id,
            "crn": volume_crn,
            "name": volume_name,
            "status": "available",
            "user_tags": volume_tags,
            "volume_attachments": [{"instance": {"id": instance_id, "name": body["name"]}, "type": "boot"}],
        }
        self.platform.register(Doc(crn, body["name"], "instance", "is", now))
        self.platform.register(Doc(volume_crn, volume_name, "volume", "is", now, set(volume_tags)))
        return self._view(instance_id, count=False)

    def _allocate(self) -> str:
        network = ipaddress.IPv4Network(self.subnet_cidr)
        used = {a for i in self.instances.values() for a in i.addresses}
        for host in itertools.islice(network.hosts(), self.first_host - 1, None):
            if str(host) not in used:
                return str(host)
        raise Refusal(400, "subnet_full", f"no free address in {self.subnet_cidr}")

    def _delete(self, request: Request) -> Reply:
        assert request.match is not None
        instance_id = request.match.group("id")
        inst = self.instances.get(instance_id)
        if inst is None:
            raise Refusal(404, "instance_not_found", f"Instance not found: {instance_id}")
        if inst.shape["status"] != "deleting":
            inst.shape["status"] = "deleting"
            inst.deleting_reads = 0
            inst.shape["deleting_since"] = datetime.datetime.now(datetime.UTC).timestamp()
            self.platform.forget(inst.shape["crn"])
            volume = self.volumes.pop(inst.volume_id, None)
            if volume is not None:
                self.platform.forget(volume["crn"])
        return Reply(204)

    def _expire_deleted(self) -> None:
        """Deleting instances finish within a second even if nobody reads them."""
        now = datetime.datetime.now(datetime.UTC).timestamp()
        for iid, inst in list(self.instances.items()):
            if (
                inst.shape["status"] == "deleting"
                and now - float(inst.shape.get("deleting_since", now)) > 1.0
            ):
                self._drop(iid)

    def _drop(self, instance_id: str) -> None:
        inst = self.instances.pop(instance_id, None)
        if inst is not None:
            self.platform.forget(inst.shape["crn"])
            volume = self.volumes.pop(inst.volume_id, None)
            if volume is not None:
                self.platform.forget(volume["crn"])

    def _volume(self, request: Request) -> Reply:
        assert request.match is not None
        volume = self.volumes.get(request.match.group("id"))
        if volume is None:
            raise Refusal(404, "volume_not_found", f"Volume not found: {request.match.group('id')}")
        return Reply(200, volume)

    def _check_references(self, body: dict[str, Any]) -> None:
        profile = self.profiles.get(body["profile"]["name"]) if "profile" in body else None
        if profile is None:
            raise Refusal(
                400, "instance_profile_not_found", f"profile {body.get('profile')} not found", "profile"
            )
        image = self.images.get(body["image"].get("id", ""))
        if image is None:
            raise Refusal(404, "image_not_found", f"Image not found: {body['image']}", "image.id")
        arch = profile["vcpu_architecture"]["value"]
        if image["operating_system"]["architecture"] != arch:
            raise Refusal(
                400,
                "image_architecture_mismatch",
                f"image {image['id']} is not {arch} like the profile",
                "image",
            )
        modes = profile["confidential_compute_modes"]["values"]
        if body.get("confidential_compute_mode", "disabled") not in modes:
            raise Refusal(400, "confidential_compute_mode_unsupported", f"{profile['name']} offers {modes}")
        if body.get("enable_secure_boot") and True not in profile["secure_boot_modes"]["values"]:
            raise Refusal(400, "secure_boot_unsupported", f"{profile['name']} has no secure boot")
        if body["zone"]["name"] != self.zone:
            raise Refusal(400, "zone_not_found", f"zone {body['zone']['name']} not found", "zone.name")
        for nic in [body["primary_network_interface"], *body.get("network_interfaces", [])]:
            if nic["subnet"].get("id") != self.subnet_id:
                raise Refusal(404, "subnet_not_found", f"subnet {nic['subnet']} not found")
            for group in nic.get("security_groups", []):
                if group.get("id") != self.security_group_id:
                    raise Refusal(404, "security_group_not_found", f"security group {group} not found")
        if "vpc" in body and body["vpc"].get("id") != self.vpc_id:
            raise Refusal(404, "vpc_not_found", f"VPC {body['vpc']} not found", "vpc.id")
        for key in body.get("keys", []):
            if key.get("id") != self.key_id:
                raise Refusal(404, "key_not_found", f"key {key} not found", "keys")
        target = body.get("placement_target", {}).get("id")
        if target is not None and target not in self.dedicated_hosts:
            raise Refusal(404, "dedicated_host_not_found", f"placement target {target} not found")
        if len(body.get("user_data", "").encode()) > USERDATA_LIMIT:
            raise Refusal(400, "validation_max_length", "user_data exceeds 65536 bytes", "user_data")


def validate_prototype(body: Any) -> None:
    """Round-trip ``body`` through the SDK's model class; refuse what does not survive unchanged."""
    from ibm_vpc.vpc_v1 import (
        InstanceMetadataServicePrototype,
        InstancePrototype,
    )
    from ibm_vpc.vpc_v1 import (
        InstancePrototypeInstanceByImageInstanceByImageInstanceByNetworkInterface as ByImage,
    )

    if not isinstance(body, dict):
        raise Refusal(400, "bad_request", "the body must be a JSON object")
    try:
        model = ByImage.from_dict(body)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise Refusal(400, "validation_required_field_missing", str(exc)) from exc
    if model.to_dict() != body:
        extra = sorted(set(body) - set(model.to_dict()))
        raise Refusal(
            400, "validation_unknown_field", f"the body does not round-trip (unknown: {extra or 'nested'})"
        )
    modes = {m.value for m in InstancePrototype.ConfidentialComputeModeEnum}
    if body.get("confidential_compute_mode", "disabled") not in modes:
        raise Refusal(400, "validation_invalid_enum", f"confidential_compute_mode not in {sorted(modes)}")
    protocols = {p.value for p in InstanceMetadataServicePrototype.ProtocolEnum}
    if body.get("metadata_service", {}).get("protocol", "http") not in protocols:
        raise Refusal(400, "validation_invalid_enum", f"metadata_service.protocol not in {sorted(protocols)}")
    for name in (body.get("name"), body.get("boot_volume_attachment", {}).get("volume", {}).get("name")):
        if name is not None and (len(name) > 63 or not NAME.match(name)):
            raise Refusal(400, "validation_invalid_name", f"name {name!r} is not a valid VPC name", "name")
