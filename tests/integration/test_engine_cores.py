"""On a CPU host each replica's engine computes on cores of its own (`llm_ops.stack.engine_core_sets`): left to
itself, vLLM's CPU build pins every engine to the same core, and replicas take turns on it."""

from __future__ import annotations

import itertools
import os

import pytest

from tests.conftest import ENGINE_PROCESS
from tests.integration.conftest import Stack, worker_processes

pytestmark = pytest.mark.integration


def engine_cores(worker_url: str) -> set[int]:
    """The cores the threads of the engine behind `worker_url` may run on."""
    port = int(worker_url.rsplit(":", 1)[1])
    engines = [process for process in worker_processes(port) if process.name().startswith(ENGINE_PROCESS)]
    assert len(engines) == 1, f"{worker_url}: engine processes {engines}"
    (engine,) = engines
    return {core for thread in engine.threads() for core in os.sched_getaffinity(thread.id)}


def test_each_replicas_engine_computes_on_cores_no_other_replicas_engine_uses(stack: Stack) -> None:
    assert len(os.sched_getaffinity(0)) >= len(stack.worker_urls), "fewer cores than replicas: they must share"
    cores = {url: engine_cores(url) for url in stack.worker_urls}
    for (one, its), (other, theirs) in itertools.combinations(cores.items(), 2):
        assert not its & theirs, f"{one} and {other} share cores: {cores}"
