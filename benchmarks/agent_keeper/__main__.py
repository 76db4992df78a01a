import json

from benchmarks.agent_keeper import run

print(json.dumps(run(), indent=1))
