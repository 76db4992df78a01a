"""Fixtures for the AWS provider tests: one moto server (HTTP, loopback) per session, a world per test."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from aws_testkit import REGION, AwsWorld, make_world
from moto.server import ThreadedMotoServer

from cloud_api_adaptor.testing.faultproxy import FaultProxy


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_ec2(moto_url: str) -> Iterator[Any]:
    client = boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=moto_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def proxy(moto_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_url) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def world(moto_url: str, proxy: FaultProxy, moto_ec2: Any) -> Iterator[AwsWorld]:
    world = make_world(moto_url, proxy, moto_ec2)
    try:
        yield world
    finally:
        ids = sorted(world.live_ids())
        if ids:
            moto_ec2.terminate_instances(InstanceIds=ids)
