"""CPU seconds by kind of process (llm_ops/bench/cpu.py), as `llm-ops bench` reports them."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from llm_ops.bench import cpu
from tests.conftest import wait_until


def test_cpu_used_between_two_snapshots_is_added_up_by_kind_of_process() -> None:
    before = cpu.snapshot()
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    assert cpu.used(before, cpu.snapshot())["bench client"] >= 0.2
    assert cpu.summed([{"a": 1.0, "b": 0.5}, {"b": 1.0}]) == {"b": 1.5, "a": 1.0}


def test_a_running_process_is_named_after_the_service_it_belongs_to() -> None:
    # Named like the stack's worker by its arguments: `kind` reads command lines. It sleeps on purpose: a
    # process that runs while the test looks at it.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "llm-ops", "worker"])
    try:
        process = psutil.Process(child.pid)
        wait_until(lambda: "llm-ops worker" in " ".join(process.cmdline()), 10, "the child's exec", interval=0.05)
        assert cpu.kind(psutil.Process(child.pid)) == "worker http"
        assert cpu.kind(psutil.Process()) == "bench client"
    finally:
        child.kill()
        child.wait()
