"""Where the CPU went while a target was measured: CPU seconds by kind of process, over the machine.

On a small machine every process competes with the engine for the same cores, so a target's
throughput is what the engine gets after the front door, the worker, the idle services and the
load generator itself took theirs. Processes are named by what they belong to: the vLLM engine of
the stack's worker or of vLLM's own server (its engine-core and model-runner processes are
children of the process that started them), Traefik, the worker's HTTP process, this load
generator, and the rest.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import psutil

from llm_ops.worker.vllm_api import ENGINE_PROCESS_PREFIX, REFERENCE_SERVER_MODULE

Snapshot = dict[int, tuple[str, float]]


def kind(process: psutil.Process) -> str:
    """What a process belongs to, from its own command line and its ancestors'."""
    if process.pid == os.getpid():
        return "bench client"
    is_engine = process.name().startswith(ENGINE_PROCESS_PREFIX)
    for member in [process, *process.parents()]:
        command = " ".join(member.cmdline())
        if REFERENCE_SERVER_MODULE in command:
            return "vllm server engine" if is_engine else "vllm server http"
        if "llm-ops worker" in command or "llm_ops worker" in command:
            return "worker engine" if is_engine else "worker http"
        if os.path.basename(member.name()) == "traefik":
            return "traefik"
    return "other"


def snapshot() -> Snapshot:
    """Every process's kind and CPU seconds so far (user + system)."""
    taken: Snapshot = {}
    for process in psutil.process_iter():
        try:
            times = process.cpu_times()
            taken[process.pid] = (kind(process), times.user + times.system)
        except psutil.Error:  # gone, or not ours to read
            continue
    return taken


def used(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds by kind between two snapshots (a process started in between counts from zero)."""
    seconds = summed(
        {name: total - (before[pid][1] if before.get(pid, ("", 0.0))[0] == name else 0.0)}
        for pid, (name, total) in after.items()
    )
    return {name: value for name, value in seconds.items() if value > 0}


def summed(measurements: Iterable[dict[str, float]]) -> dict[str, float]:
    """CPU seconds by kind, added up; the biggest first."""
    total: dict[str, float] = {}
    for measurement in measurements:
        for name, seconds in measurement.items():
            total[name] = total.get(name, 0.0) + seconds
    return {name: round(seconds, 3) for name, seconds in sorted(total.items(), key=lambda item: -item[1])}
