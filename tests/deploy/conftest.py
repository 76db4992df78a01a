"""Fixtures for the deployment tests: the real helm and kustomize, and schema validation.

helm and kustomize are built from the Go module proxy by scripts/install-deploy-tools.sh (cached
after the first run); every rendered object is validated against the Kubernetes OpenAPI schemas
of a pinned version shipped in the kubernetes-validate package (no network).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy/charts/peerpods"
OVERLAYS = REPO / "deploy/kustomize/overlays"
NAMESPACE = "confidential-containers-system"
#: Kubernetes version whose OpenAPI schemas every rendered object must satisfy.
KUBE_VERSION = "1.35"

Obj = dict[str, Any]


@dataclass(frozen=True)
class DeployTools:
    helm: Path
    kustomize: Path


@pytest.fixture(scope="session")
def deploy_tools() -> DeployTools:
    """helm and kustomize, built once per machine by the project's own script."""
    if shutil.which("go") is None and not (REPO / ".cache/go-bin").exists():
        pytest.fail("go is needed to build helm and kustomize (scripts/install-deploy-tools.sh)")
    done = subprocess.run(
        ["bash", str(REPO / "scripts/install-deploy-tools.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )
    if done.returncode != 0:
        pytest.fail(f"install-deploy-tools.sh failed:\n{done.stderr[-4000:]}")
    paths = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return DeployTools(helm=Path(paths["helm"]), kustomize=Path(paths["kustomize"]))


def load_objects(text: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def validate_objects(objects: Sequence[Obj]) -> None:
    """Every object must match its kind's schema (strict: unknown fields are errors)."""
    import kubernetes_validate

    assert objects, "nothing rendered"
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")


def find(objects: Sequence[Obj], kind: str, name: str | None = None) -> Obj:
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, got {len(matches)}"
    return matches[0]


def kinds(objects: Sequence[Obj]) -> list[str]:
    return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects)


def required_keys() -> dict[str, list[str]]:
    """The chart's own list of required keys per provider (generated into _generated.tpl)."""
    text = (CHART / "templates/_generated.tpl").read_text()
    line = next(line for line in text.splitlines() if line.startswith('{"'))
    result: dict[str, list[str]] = json.loads(line)
    return result


def minimal_values(provider: str, **extra: Any) -> dict[str, Any]:
    """Values that install ``provider``: its required keys filled with placeholders."""
    values: dict[str, Any] = {
        "provider": provider,
        "providerConfigs": {provider: {key: f"test-{key.lower()}" for key in required_keys()[provider]}},
    }
    for key, value in extra.items():
        values[key] = value
    return values


class HelmFailed(Exception):
    """helm exited non-zero; the message is its stderr."""


@pytest.fixture
def helm(deploy_tools: DeployTools, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run helm with a values dict (written as a file, as a user would pass -f)."""
    counter = iter(range(1000))

    def run(command: str, values: Mapping[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
        values_file = tmp_path / f"values-{next(counter)}.yaml"
        values_file.write_text(yaml.safe_dump(dict(values)))
        return subprocess.run(
            [str(deploy_tools.helm), command, *args, "-f", str(values_file)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "HELM_CACHE_HOME": str(tmp_path / "hc")},
        )

    return run


@pytest.fixture
def render(helm: Callable[..., subprocess.CompletedProcess[str]]) -> Callable[..., list[Obj]]:
    """``helm template`` the chart with ``values`` into validated objects; HelmFailed on failure."""

    def run(values: Mapping[str, Any]) -> list[Obj]:
        done = helm("template", values, "peerpods", str(CHART), "--namespace", NAMESPACE)
        if done.returncode != 0:
            raise HelmFailed(done.stderr)
        objects = load_objects(done.stdout)
        validate_objects(objects)
        return objects

    return run


@pytest.fixture
def kustomize_build(deploy_tools: DeployTools) -> Callable[[Path], list[Obj]]:
    def run(path: Path) -> list[Obj]:
        done = subprocess.run(
            [str(deploy_tools.kustomize), "build", str(path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        objects = load_objects(done.stdout)
        validate_objects(objects)
        return objects

    return run
