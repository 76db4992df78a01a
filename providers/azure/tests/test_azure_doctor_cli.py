"""``cloud-api-adaptor doctor --provider azure`` against the fake ARM: every check passes; with the image
gone, that check fails and the exit code is non-zero.

The command runs as its own process with the Go version's keys in its environment,
so configuration loading, the real credential flow and the table all run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from azure_testkit import AzureWorld
from caa_provider_azure.config import AzureConfig

CLI = str(Path(sys.executable).parent / "cloud-api-adaptor")


def doctor(config: AzureConfig, state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(state_dir),
        "STATE_DIR": str(state_dir / "state"),
        "AZURE_SUBSCRIPTION_ID": config.subscription_id,
        "AZURE_REGION": config.region,
        "AZURE_RESOURCE_GROUP": config.resource_group,
        "AZURE_SUBNET_ID": config.subnet_id,
        "AZURE_NSG_ID": config.nsg_id,
        "AZURE_IMAGE_ID": config.image_id,
        "AZURE_CLIENT_ID": config.client_id,
        "AZURE_CLIENT_SECRET": config.client_secret,
        "AZURE_TENANT_ID": config.tenant_id,
        "AZURE_AUTHORITY_HOST": config.authority_host,
        "AZURE_RESOURCE_MANAGER_ENDPOINT": config.resource_manager_endpoint,
        "REQUESTS_CA_BUNDLE": config.ca_bundle,
    }
    return subprocess.run(
        [CLI, "doctor", "--provider", "azure"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def rows(output: str) -> dict[str, str]:
    table = {}
    for line in output.splitlines()[1:]:
        for result in (" ok ", " FAIL "):
            if result in line:
                table[line.split(result)[0].strip()] = result.strip()
    return table


def test_doctor_passes_against_the_fake_and_fails_with_the_image_missing(
    world: AzureWorld, tmp_path: Path
) -> None:
    config = world.config()
    passed = doctor(config, tmp_path)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    table = rows(passed.stdout)
    assert {"credentials", "image", "sizes", "subnet", "network security group", "quota"} <= set(table)
    assert set(table.values()) == {"ok"}, passed.stdout

    world.arm.images.clear()
    failed = doctor(config, tmp_path)
    assert failed.returncode != 0
    failures = [name for name, result in rows(failed.stdout).items() if result == "FAIL"]
    assert failures == ["image"], failed.stdout
