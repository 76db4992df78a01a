"""``cloud-api-adaptor plan`` over a table of CreateVM requests: the exact JSON, and no file written.

``data/plan_golden.json`` was recorded with the planning code as it was before
CreateVM's decisions became a pure function; the table pins that the move changed
no decision, no error code and no message.  Regenerate it only for a deliberate
behaviour change: ``python -m tests.unit.hypervisor.test_plan_table``.

TLS is off in the table (``-disable-tls``) so that the userdata size does not
depend on the random key material; ``test_plan_with_tls_reports_the_userdata_a_vm_would_get``
covers the TLS case.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from cloud_api_adaptor import cli
from cloud_api_adaptor.hypervisor.planning import PlanTarget, plan_sandbox
from cloud_api_adaptor.proxy.tls import AgentTls
from cloud_api_adaptor.settings import TlsSettings

GOLDEN = Path(__file__).parent / "data" / "plan_golden.json"
HV = "io.katacontainers.config.hypervisor."
NAME = "io.kubernetes.cri.sandbox-name"
NS = "io.kubernetes.cri.sandbox-namespace"
POD = {NAME: "web", NS: "shop"}
SID = "3f5c1e7a9b2d4c6e8f0a1b3c5d7e9f11"
CATALOGUE = "small:1:512,medium:2:2048,large:4:8192,xlarge:8:16384,gpu:4:16384:1,gpu2:8:32768:2"
TOML = 'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n"aa.toml" = "x"\n'

#: (case name, provider, sandbox id, annotations, extra environment)
TABLE: list[tuple[str, str, str, dict[str, str], dict[str, str]]] = [
    ("name-and-namespace", "local", SID, POD, {}),
    ("missing-name", "local", SID, {NS: "shop"}, {}),
    ("missing-namespace", "local", SID, {NAME: "web"}, {}),
    ("blank-name", "local", SID, {NAME: "  ", NS: "shop"}, {}),
    ("cri-o-name-form", "local", SID, {NAME: "k8s_web_shop_uid_0", NS: "shop"}, {}),
    ("two-vcpus", "local", SID, {**POD, HV + "default_vcpus": "2"}, {}),
    ("memory-4g", "local", SID, {**POD, HV + "default_memory": "4096"}, {}),
    ("vcpus-and-memory", "local", SID, {**POD, HV + "default_vcpus": "2", HV + "default_memory": "2048"}, {}),
    ("best-fit-large", "local", SID, {**POD, HV + "default_vcpus": "3", HV + "default_memory": "3000"}, {}),
    ("too-many-vcpus", "local", SID, {**POD, HV + "default_vcpus": "16"}, {}),
    ("too-much-memory", "local", SID, {**POD, HV + "default_memory": "65536"}, {}),
    ("one-gpu", "local", SID, {**POD, HV + "default_gpus": "1"}, {}),
    ("two-gpus", "local", SID, {**POD, HV + "default_gpus": "2"}, {}),
    ("three-gpus", "local", SID, {**POD, HV + "default_gpus": "3"}, {}),
    ("gpu-and-big-vcpus", "local", SID, {**POD, HV + "default_gpus": "1", HV + "default_vcpus": "8"}, {}),
    ("explicit-type", "local", SID, {**POD, HV + "machine_type": "medium"}, {}),
    ("explicit-type-not-allowed", "local", SID, {**POD, HV + "machine_type": "huge"}, {}),
    (
        "explicit-type-beats-sizes",
        "local",
        SID,
        {**POD, HV + "machine_type": "large", HV + "default_vcpus": "1"},
        {},
    ),
    ("vcpus-not-a-number", "local", SID, {**POD, HV + "default_vcpus": "two"}, {}),
    ("vcpus-negative", "local", SID, {**POD, HV + "default_vcpus": "-1"}, {}),
    ("vcpus-above-maximum", "local", SID, {**POD, HV + "default_vcpus": "2000"}, {}),
    ("memory-with-blanks", "local", SID, {**POD, HV + "default_memory": " 512 "}, {}),
    ("memory-hex", "local", SID, {**POD, HV + "default_memory": "0x200"}, {}),
    ("gpus-not-a-number", "local", SID, {**POD, HV + "default_gpus": "one"}, {}),
    ("zero-sizes", "local", SID, {**POD, HV + "default_vcpus": "0", HV + "default_memory": "0"}, {}),
    ("image-annotation", "local", SID, {**POD, HV + "image": "podvm-custom.qcow2"}, {}),
    ("gpu-model", "local", SID, {**POD, HV + "default_gpu_model": "h100", HV + "default_gpus": "1"}, {}),
    ("initdata-toml", "local", SID, {**POD, HV + "cc_init_data": TOML}, {}),
    ("initdata-not-toml", "local", SID, {**POD, HV + "cc_init_data": "version = [oops"}, {}),
    ("initdata-blank", "local", SID, {**POD, HV + "cc_init_data": "   "}, {}),
    ("long-pod-name", "local", SID, {NAME: "a-very-long-pod-name-" * 5, NS: "shop"}, {}),
    ("odd-pod-name", "local", SID, {NAME: "Web_Front.end", NS: "shop"}, {}),
    ("unknown-annotation", "local", SID, {**POD, "example.com/other": "x"}, {}),
    (
        "kata-sends-all-nine",
        "local",
        SID,
        {
            **POD,
            HV + "machine_type": "",
            HV + "image": "",
            HV + "default_vcpus": "",
            HV + "default_memory": "",
            HV + "cc_init_data": "",
            HV + "default_gpus": "",
            HV + "default_gpu_model": "",
        },
        {},
    ),
    ("id-with-slash", "local", "../etc", POD, {}),
    ("id-dot", "local", ".", POD, {}),
    ("id-too-long-for-socket", "local", "x" * 100, POD, {}),
    ("id-empty", "local", "", POD, {}),
    ("fake-provider-defaults", "fake", SID, POD, {}),
    ("userdata-over-the-limit", "fake", SID, POD, {"FAKE_USERDATA_LIMIT": "100"}),
    ("userdata-under-the-limit", "fake", SID, POD, {"FAKE_USERDATA_LIMIT": "65536"}),
]


def _env(state_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "STATE_DIR": str(state_dir),
        "PODS_DIR": "/run/peerpod/pods",
        "LOCAL_MODE": "loopback",
        "LOCAL_INSTANCE_TYPES": CATALOGUE,
        "LOG_LEVEL": "error",
        **extra,
    }


def run_plan(
    provider: str, sandbox_id: str, annotations: dict[str, str], env: dict[str, str], *args: str
) -> tuple[int, Any]:
    argv = ["plan", "--provider", provider, "--id", sandbox_id, *args]
    for key, value in annotations.items():
        argv += ["--annotation", f"{key}={value}"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(argv, env)
    return code, json.loads(out.getvalue())


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*"))


@pytest.mark.parametrize(
    ("case", "provider", "sandbox_id", "annotations", "extra"), TABLE, ids=[t[0] for t in TABLE]
)
def test_plan_output_is_what_it_was(
    case: str,
    provider: str,
    sandbox_id: str,
    annotations: dict[str, str],
    extra: dict[str, str],
    short_tmp: Path,
) -> None:
    golden = json.loads(GOLDEN.read_text())[case]
    state_dir = short_tmp / "state"
    code, output = run_plan(provider, sandbox_id, annotations, _env(state_dir, extra), "-disable-tls")
    assert [code, output] == golden
    assert not state_dir.exists(), "plan must not create the state directory"
    assert _files(short_tmp) == []


def test_the_table_is_large_enough_and_its_golden_complete() -> None:
    golden = json.loads(GOLDEN.read_text())
    assert len(TABLE) >= 30
    assert sorted(golden) == sorted(t[0] for t in TABLE)


def test_plan_with_tls_reports_the_userdata_a_vm_would_get(short_tmp: Path) -> None:
    """The size of a record rendered with the daemon's persisted TLS material (signatures vary a little)."""
    code, output = run_plan("local", SID, POD, _env(short_tmp / "state", {}))
    assert code == 0, output
    assert not (short_tmp / "state").exists()
    tls = AgentTls.from_settings(TlsSettings(), short_tmp / "daemon")
    target = PlanTarget(pods_dir="/run/peerpod/pods", default_instance_type="small")
    record = plan_sandbox(SID, POD, target, tls_fields=tls.apf_tls_fields)
    assert abs(output["userdata_bytes"] - len(record.userdata.encode())) <= 8
    assert output["userdata_bytes"] > 1500  # two certificates and a key are in it


def _record() -> None:
    import tempfile

    results: dict[str, Any] = {}
    for case, provider, sandbox_id, request, extra in TABLE:
        with tempfile.TemporaryDirectory() as tmp:
            code, output = run_plan(
                provider, sandbox_id, request, _env(Path(tmp) / "state", extra), "-disable-tls"
            )
        results[case] = [code, output]
    GOLDEN.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(results)} cases to {GOLDEN}")


if __name__ == "__main__":
    _record()
