"""moto in server mode as the tests' EC2, and the test's own view of it.

One moto backend per test process (moto keeps its state in module globals, so
every ``ThreadedMotoServer`` of the process serves the same EC2).  The hub's
listener on 127.0.0.1 is the test's view and the fault proxy's upstream; each
stand adds a listener on its root-side address for the daemon in the node
namespace.  Each test gets a VPC of its own whose subnet is 198.51.100.0/24, so
the private IPs moto hands out fall inside the stand's VM subnet.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from cloud_api_adaptor.provider import TAG_CLUSTER, TAG_NODE, TAG_SANDBOX

from ..cloudstand.podvm import PodVm
from ..cloudstand.stand import VM_SUBNET

REGION = "us-east-1"
#: a default AMI moto ships (Amazon Linux 2)
AMI = "ami-04681a1dbd79675a5"
#: every state but terminated (and shutting-down, which is termination under way)
LIVE_STATES = ("pending", "running", "stopping", "stopped")


def ec2_client(url: str) -> Any:
    return boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def serve_moto(host: str) -> tuple[ThreadedMotoServer, str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address=host, port=0, verbose=False)
    server.start()
    bound_host, port = server.get_host_and_port()
    return server, f"http://{bound_host}:{port}"


@dataclass
class Vpc:
    """One test's VPC, subnet and security group in moto, and queries over its instances."""

    ec2: Any  # a boto3 client straight to moto (loopback): the cloud as the test sees it
    vpc_id: str
    subnet_id: str
    sg_id: str

    @classmethod
    def create(cls, ec2: Any) -> Vpc:
        vpc = ec2.create_vpc(CidrBlock=str(VM_SUBNET))["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=str(VM_SUBNET))["Subnet"]["SubnetId"]
        sg = ec2.create_security_group(
            GroupName=f"podvm-{uuid.uuid4().hex[:8]}", Description="pod VMs", VpcId=vpc
        )["GroupId"]
        return cls(ec2, vpc, subnet, sg)

    def instances(self, states: tuple[str, ...] = (), **tags: str) -> list[dict[str, Any]]:
        """Instances in this VPC carrying ``tags`` (in ``states`` if given), every page."""
        filters: list[dict[str, Any]] = [{"Name": "vpc-id", "Values": [self.vpc_id]}]
        if states:
            filters.append({"Name": "instance-state-name", "Values": list(states)})
        filters += [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
        pages = self.ec2.get_paginator("describe_instances").paginate(Filters=filters)
        found = [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
        # tag filter values are patterns: keep exact matches only
        return [i for i in found if all(tag_map(i).get(k) == v for k, v in tags.items())]

    def live(self, **tags: str) -> list[dict[str, Any]]:
        return self.instances(LIVE_STATES, **tags)

    def of_sandbox(self, sandbox_id: str, live_only: bool = True) -> list[dict[str, Any]]:
        states = LIVE_STATES if live_only else ()
        return self.instances(states, **{TAG_SANDBOX: sandbox_id})

    def userdata(self, instance_id: str) -> str:
        answer = self.ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        return base64.b64decode(answer["UserData"]["Value"]).decode()

    def state(self, instance_id: str) -> str:
        found = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        return str(found["State"]["Name"])

    def run_tagged(self, tags: Mapping[str, str]) -> str:
        """An instance launched behind the daemon's back (an orphan candidate); its id."""
        answer = self.ec2.run_instances(
            ImageId=AMI,
            MinCount=1,
            MaxCount=1,
            InstanceType="m6a.large",
            SubnetId=self.subnet_id,
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
            ],
        )
        return str(answer["Instances"][0]["InstanceId"])

    def terminate_all(self) -> None:
        ids = [str(i["InstanceId"]) for i in self.live()]
        if ids:
            self.ec2.terminate_instances(InstanceIds=ids)

    def daemon_env(self, endpoint: str, node: str, cluster: str) -> dict[str, str]:
        """The AWS provider's keys (the Go version's names) for a daemon using this VPC."""
        return {
            "CLOUD_PROVIDER": "aws",
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_EC2_METADATA_DISABLED": "true",
            "PODVM_AMI_ID": AMI,
            "AWS_SUBNET_ID": self.subnet_id,
            "AWS_SG_IDS": self.sg_id,
            "NODE_NAME": node,
            "CLUSTER_ID": cluster,
            "LOG_LEVEL": "info",  # botocore's debug output would drown the daemon's log
        }


def tag_map(instance: Mapping[str, Any]) -> dict[str, str]:
    return {str(t["Key"]): str(t["Value"]) for t in instance.get("Tags", [])}


def owner_tags(node: str, cluster: str, sandbox: str) -> dict[str, str]:
    return {TAG_CLUSTER: cluster, TAG_NODE: node, TAG_SANDBOX: sandbox}


async def boot_pod_vm(vm: PodVm, vpc: Vpc, instance: dict[str, Any]) -> None:
    """Boot ``vm`` as ``instance`` (a DescribeInstances entry): its private IP and the UserData moto holds."""
    userdata = await asyncio.to_thread(vpc.userdata, str(instance["InstanceId"]))
    await vm.boot(str(instance["PrivateIpAddress"]), userdata)
