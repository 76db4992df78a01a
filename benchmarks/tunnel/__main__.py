"""``python -m benchmarks.tunnel``: run the tunnel benchmark alone and print its JSON."""

from __future__ import annotations

import json

from benchmarks.tunnel import run

if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
