"""Start-up imports only the selected provider's SDK (start-up to listening socket stays fast)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import cloud_api_adaptor.cli, cloud_api_adaptor.daemon
from cloud_api_adaptor.plugins import load_plugin
load_plugin(sys.argv[1])
heavy = {"boto3", "botocore", "libvirt", "moto", "pycdlib", "kubernetes", "pyroute2", "lightkube", "httpx2"}
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & heavy)))
"""


def loaded_sdks(provider: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, provider], check=True, capture_output=True, text=True)
    return list(json.loads(out.stdout))


def test_the_local_provider_loads_no_cloud_sdk() -> None:
    assert loaded_sdks("local") == []


def test_the_aws_provider_loads_only_its_own_sdk() -> None:
    assert set(loaded_sdks("aws")) <= {"boto3", "botocore"}
