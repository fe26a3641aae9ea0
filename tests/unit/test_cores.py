"""Cores of its own for each worker's engine (`llm_ops.worker.cores`): slices of the host's cores, claimed with a
lock file per slice in a directory the workers share."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from llm_ops.settings import ConfigurationError, WorkerOptions
from llm_ops.worker.cores import claimed_cores, core_slices, cpu_list, engine_cores_environment

BIND = "VLLM_CPU_OMP_THREADS_BIND"


@pytest.fixture(autouse=True)
def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host the worker sees: cores 0 and 1, whatever this machine has."""
    monkeypatch.setattr("llm_ops.worker.cores.os.sched_getaffinity", lambda pid: {1, 0})


def claiming(directory: Path, cores_per_engine: int = 1) -> WorkerOptions:
    return WorkerOptions(claim_engine_cores=directory, cores_per_engine=cores_per_engine)


@pytest.mark.parametrize(
    ("cpus", "size", "slices"),
    [
        ([0, 1], 1, [[0], [1]]),
        ([0, 1, 2, 3, 4], 2, [[0, 1], [2, 3]]),  # core 4 is left over: in no slice
        ([0, 1], 4, []),
    ],
)
def test_the_cores_are_cut_into_contiguous_slices_and_leftovers_are_in_none(
    cpus: list[int], size: int, slices: list[list[int]]
) -> None:
    assert core_slices(cpus, size) == slices


def test_a_core_list_is_written_as_vllm_reads_it() -> None:
    assert [cpu_list(cpus) for cpus in ([3], [0, 1, 2, 3], [0, 2, 5])] == ["3", "0-3", "0,2,5"]


def test_two_claims_in_one_process_get_different_slices(tmp_path: Path) -> None:
    with claimed_cores(tmp_path, 2, [0, 1, 2, 3]) as first, claimed_cores(tmp_path, 2, [0, 1, 2, 3]) as second:
        assert (first, second) == ([0, 1], [2, 3])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cores-0-1.lock", "cores-2-3.lock"]


def test_a_released_slice_is_claimed_again_before_a_later_one(tmp_path: Path) -> None:
    with claimed_cores(tmp_path, 1, [0, 1, 2]) as first:
        with claimed_cores(tmp_path, 1, [0, 1, 2]) as second:
            assert (first, second) == ([0], [1])
        with claimed_cores(tmp_path, 1, [0, 1, 2]) as again:
            assert again == [1]
    with claimed_cores(tmp_path, 1, [0, 1, 2]) as after_all:
        assert after_all == [0]


@pytest.mark.slow
def test_the_claim_of_a_killed_process_is_free_again(tmp_path: Path) -> None:
    """The lock goes with the process, also on SIGKILL: a container killed with `docker kill` leaves no claim."""
    lock = tmp_path / "cores-0.lock"
    code = "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); print(flush=True); input()"
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"\n"  # it holds core 0
        with claimed_cores(tmp_path, 1, [0, 1]) as beside_it:
            assert beside_it == [1]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    with claimed_cores(tmp_path, 1, [0, 1]) as after_it:
        assert after_it == [0]


def test_the_engine_computes_on_the_claimed_slice_while_the_claim_is_held(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO), engine_cores_environment(claiming(tmp_path), {"PATH": "/bin"}) as environment:
        assert environment == {"PATH": "/bin", BIND: "0"}
        assert f"the engine computes on cores 0 (claimed in {tmp_path})" in caplog.messages
        with claimed_cores(tmp_path, 1, [0, 1]) as other:
            assert other == [1]
    with claimed_cores(tmp_path, 1, [0, 1]) as after:
        assert after == [0]


def test_when_every_slice_is_claimed_the_engine_runs_unpinned_with_a_slices_threads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with claimed_cores(tmp_path, 1, [0, 1]), claimed_cores(tmp_path, 1, [0, 1]):
        with engine_cores_environment(claiming(tmp_path), {}) as environment:
            assert environment == {BIND: "nobind", "OMP_NUM_THREADS": "1"}
            unpinned = f"no 1 of cores 0-1 are free to claim in {tmp_path}: the engine runs unpinned, 1 thread(s)"
            assert caplog.messages[-1] == unpinned
        with engine_cores_environment(claiming(tmp_path), {"OMP_NUM_THREADS": "4"}) as environment:
            assert environment == {BIND: "nobind", "OMP_NUM_THREADS": "4"}  # the user's thread count stays


def test_more_cores_per_engine_than_the_host_has_runs_the_engine_unpinned(tmp_path: Path) -> None:
    with engine_cores_environment(claiming(tmp_path, cores_per_engine=3), {}) as environment:
        assert environment == {BIND: "nobind", "OMP_NUM_THREADS": "3"}


def test_cores_the_user_chose_are_kept_and_nothing_is_claimed(tmp_path: Path) -> None:
    chosen = {BIND: "0-3"}
    with engine_cores_environment(claiming(tmp_path / "claims"), chosen) as environment:
        assert environment == chosen
    assert not (tmp_path / "claims").exists()


def test_without_a_claims_directory_vllm_binds_the_cores_itself() -> None:
    with engine_cores_environment(WorkerOptions(), {"PATH": "/bin"}) as environment:
        assert environment == {"PATH": "/bin"}


def test_a_claims_directory_that_cannot_be_made_stops_the_worker_before_it_starts(tmp_path: Path) -> None:
    (tmp_path / "a-file").touch()
    with (
        pytest.raises(ConfigurationError, match="cannot claim engine cores in .*a-file/claims"),
        engine_cores_environment(claiming(tmp_path / "a-file" / "claims"), {}),
    ):
        pytest.fail("the worker went on")
