"""``python -m benchmarks.ttrpc``: run the ttrpc benchmark and print its results."""

from __future__ import annotations

import json

from benchmarks.ttrpc import run

if __name__ == "__main__":
    results = run()
    print(json.dumps(results, indent=2))
    for label, key in (
        (f"python ({results['python_server_loop']})", "ratio_python_over_go"),
        ("python (asyncio)", "ratio_python_asyncio_over_go"),
    ):
        for case, ratio in results[key].items():
            print(
                f"{label:18s} {case:36s} p50 latency x{ratio['p50_latency']:.2f}"
                f"  throughput x{ratio['throughput']:.2f}"
            )
