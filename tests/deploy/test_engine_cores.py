"""With `--scale`, each replica's engine computes on cores no other replica's engine uses: every replica's worker
claims cores of its own in a volume the replicas share (`--claim-engine-cores`, docker-compose.cpu-test.yml).
Left to itself, vLLM's CPU build pins every engine to the same core."""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Callable

import pytest

from tests.conftest import ENGINE_PROCESS
from tests.deploy.conftest import DOTTED_SERVICE, MODEL_SERVICE, REPLICAS, Deployment

pytestmark = pytest.mark.deploy

# Run in a container: the engine processes there and the cores any of their threads may run on.
ENGINE_CORES = f"""
import json, os
engines, cores = 0, set()
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if open(f"/proc/{{pid}}/comm").read().startswith({ENGINE_PROCESS!r}):
            engines += 1
            for thread in os.listdir(f"/proc/{{pid}}/task"):
                cores |= os.sched_getaffinity(int(thread))
    except (FileNotFoundError, ProcessLookupError):  # a process or thread that just ended
        pass
print(json.dumps({{"engines": engines, "cores": sorted(cores)}}))
"""


def engine_cores(container: str) -> set[int]:
    """The cores the threads of the engine in `container` may run on."""
    done = subprocess.run(
        ["docker", "exec", container, "python", "-c", ENGINE_CORES], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"{container}: {done.stderr[-2000:]}"
    found = json.loads(done.stdout)
    assert found["engines"] == 1, f"{container}: {found['engines']} engine processes"
    return set(found["cores"])


def test_each_replicas_engine_computes_on_cores_no_other_replicas_engine_uses(
    deployed: Deployment, record_property: Callable[[str, object], None]
) -> None:
    replicas = deployed.containers(MODEL_SERVICE)
    assert len(replicas) == REPLICAS
    cores = {container: engine_cores(container) for container in replicas}
    record_property("replicas_engine_cores", sorted(sorted(its) for its in cores.values()))
    record_property("unpinned_engine_cores", sorted(engine_cores(deployed.containers(DOTTED_SERVICE)[0])))
    for (one, its), (other, theirs) in itertools.combinations(cores.items(), 2):
        assert not its & theirs, f"the engines of {one} and {other} share cores: {cores}"
