"""``python -m benchmarks.agent_channel``: print the agent-channel benchmark as JSON."""

from __future__ import annotations

import json

from benchmarks.agent_channel import run

if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
