"""Cores of its own for each engine on a CPU host: the slices `llm-ops up` hands its replicas
(`llm_ops.stack.worker_environments`), or one a worker claims itself (`--claim-engine-cores DIR`).

vLLM's CPU build pins an engine's OpenMP threads to cores it picks, the same ones for every engine on a host (on two
cores: core 0, leaving core 1 to the API servers), so engines side by side take turns on one core. Replicas of a
compose service cannot be told apart (`--scale` gives them one environment), so each worker claims a slice: an
exclusive `flock` on a file per slice in a directory the workers share (in Docker, a volume: containers share the
kernel, and with it the locks). The lock goes with the process that holds the file open, also on SIGKILL, so a
restarted worker finds its slice free again.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from llm_ops.settings import ConfigurationError, WorkerOptions
from llm_ops.worker.vllm_api import CPU_CORES_VARIABLE

logger = logging.getLogger(__name__)

UNPINNED = "nobind"  # CPU_CORES_VARIABLE's value for: leave the engine's threads to the kernel
OMP_THREADS_VARIABLE = "OMP_NUM_THREADS"


def core_slices(cpus: list[int], size: int) -> list[list[int]]:
    """`cpus` cut into contiguous slices of `size`; the cores left over, fewer than `size`, are in none."""
    return [cpus[start : start + size] for start in range(0, len(cpus) - size + 1, size)]


def cpu_list(cpus: list[int]) -> str:
    """vLLM's form of a core list: "3", "0-3", or "0,2,5"."""
    if cpus == list(range(cpus[0], cpus[-1] + 1)) and len(cpus) > 1:
        return f"{cpus[0]}-{cpus[-1]}"
    return ",".join(map(str, cpus))


@contextmanager
def claimed_cores(directory: Path, size: int, cpus: list[int]) -> Iterator[list[int] | None]:
    """The first slice of `size` of `cpus` that no open file holds in `directory`, held until the block ends (or
    the process does); None when every slice is held."""
    for cores in core_slices(cpus, size):
        with _lock_file(directory / f"cores-{cpu_list(cores)}.lock") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            yield cores
            return
    yield None


def _lock_file(path: Path) -> TextIO:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("a")
    except OSError as error:
        raise ConfigurationError(f"cannot claim engine cores in {path.parent}: {error}") from error


@contextmanager
def engine_cores_environment(options: WorkerOptions, environ: dict[str, str]) -> Iterator[dict[str, str]]:
    """`environ` with the cores the engine computes on: a slice claimed in `options.claim_engine_cores` while the
    block runs, or none (unpinned) when no slice is free. Unchanged without the option, or when `environ`
    already chooses the cores."""
    directory, size = options.claim_engine_cores, options.cores_per_engine
    if directory is None or CPU_CORES_VARIABLE in environ:
        if directory is not None:
            logger.info("%s=%s is set: no engine cores claimed", CPU_CORES_VARIABLE, environ[CPU_CORES_VARIABLE])
        yield environ
        return
    cpus = sorted(os.sched_getaffinity(0))
    with claimed_cores(directory, size, cpus) as cores:
        if cores is None:
            yield _unpinned(environ, size, f"no {size} of cores {cpu_list(cpus)} are free to claim in {directory}")
        else:
            logger.info("the engine computes on cores %s (claimed in %s)", cpu_list(cores), directory)
            yield environ | {CPU_CORES_VARIABLE: cpu_list(cores)}


def _unpinned(environ: dict[str, str], threads: int, why: str) -> dict[str, str]:
    """The engine left to the kernel with as many threads as a slice has cores: more would crowd the engines
    that have cores of their own."""
    threads_set = environ.get(OMP_THREADS_VARIABLE, str(threads))
    logger.warning("%s: the engine runs unpinned, %s thread(s)", why, threads_set)
    return environ | {CPU_CORES_VARIABLE: UNPINNED, OMP_THREADS_VARIABLE: threads_set}
