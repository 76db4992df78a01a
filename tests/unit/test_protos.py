"""The generated protobuf modules are exactly what ``make protos`` produces from protos/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_modules_match_the_protos(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    (copy / "cloud_api_adaptor").mkdir(parents=True)
    shutil.copytree(ROOT / "protos", copy / "protos")
    shutil.copytree(ROOT / "scripts", copy / "scripts")
    shutil.copytree(ROOT / "cloud_api_adaptor" / "_pb", copy / "cloud_api_adaptor" / "_pb")
    subprocess.run(
        ["bash", "scripts/gen-protos.sh"],
        cwd=copy,
        env={**os.environ, "PYTHON": sys.executable},
        check=True,
        capture_output=True,
    )
    committed = ROOT / "cloud_api_adaptor" / "_pb"
    regenerated = copy / "cloud_api_adaptor" / "_pb"
    names = sorted(p.name for p in committed.iterdir() if p.suffix in {".py", ".pyi"})
    assert names == sorted(p.name for p in regenerated.iterdir() if p.suffix in {".py", ".pyi"})
    for name in names:
        assert (committed / name).read_bytes() == (regenerated / name).read_bytes(), (
            f"{name} is stale: run make protos"
        )
