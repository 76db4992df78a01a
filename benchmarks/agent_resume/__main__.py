import json

from benchmarks.agent_resume import run

print(json.dumps(run(), indent=1))
