"""``python -m benchmarks.ttrpc``: run the ttrpc benchmark and print its results."""

from __future__ import annotations

import json

from benchmarks.ttrpc import run

if __name__ == "__main__":
    results = run()
    print(json.dumps(results, indent=2))
    for case, ratio in results["ratio_python_over_go"].items():
        print(f"{case:36s} p50 latency x{ratio['p50_latency']:.2f}  throughput x{ratio['throughput']:.2f}")
