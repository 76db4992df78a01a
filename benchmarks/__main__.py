"""``make bench``: every benchmark, each as ratios against a baseline measured in the same run.

Each sub-package exposes ``run() -> dict``; results are printed as JSON and
written to ``benchmarks/results.json``.  Nothing here is asserted: machines are
noisy, so the numbers go into the README, not into tests.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from pathlib import Path

SUITES = (
    "startup",
    "ttrpc",
    "agent_channel",
    "agent_resume",
    "agent_keeper",
    "lifecycle",
    "tunnel",
    "aws_calls",
    "azure_calls",
    "gcp_calls",
    "ibmcloud_calls",
)


def main(argv: list[str]) -> int:
    selected = argv or list(SUITES)
    results: dict[str, object] = {}
    failed = False
    for name in selected:
        started = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            results[name] = module.run()
        except Exception as exc:
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            failed = True
        print(
            f"[{name}] {time.perf_counter() - started:.1f} s: {json.dumps(results[name], indent=1)}",
            flush=True,
        )
    out = Path(__file__).with_name("results.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
