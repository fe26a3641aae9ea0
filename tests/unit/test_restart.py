"""Native replicas come back whenever they end, like containers with `restart: unless-stopped`, but not
forever; stopping the wrapper stops the command gracefully and is never followed by a restart."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from llm_ops import restart
from tests.conftest import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def no_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(restart, "RESTART_DELAY_SECONDS", 0.0)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def start_wrapper(args: list[str], ready: Path) -> subprocess.Popen[bytes]:
    """`python -m llm_ops.restart ARGS` in a process of its own, once its command has written `ready` (which
    a command writes once it has installed its signal handlers; the wrapper installs its own before it
    starts the command)."""
    wrapper = subprocess.Popen([sys.executable, "-m", "llm_ops.restart", *args], cwd=Path(__file__).parents[2])
    wait_until(lambda: ready.exists() and ready.read_text() != "", 10, "the command to start", interval=0.05)
    return wrapper


def ready_then_wait(ready: Path) -> str:
    """A command's last lines: it says it is ready (`start_wrapper` waits for that), then runs until stopped."""
    return f"open({str(ready)!r}, 'w').write('ready')\ntime.sleep(60)"  # deliberate: a command that keeps running


def counting_runs(runs: Path, then: str) -> list[str]:
    """A command that appends 'x' to `runs`, then runs `then` (with `count`: the number of runs so far)."""
    return python(f"import sys; f = open({str(runs)!r}, 'a+'); f.write('x'); f.seek(0); count = len(f.read()); {then}")


def test_a_crashed_command_is_restarted(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert restart.run_restarting(counting_runs(runs, "sys.exit(9 if count == 1 else 3)")) == 3
    assert runs.read_text() == "x" * restart.QUICK_EXITS_ALLOWED


def test_a_command_that_ends_cleanly_is_restarted_too_like_a_container(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert restart.run_restarting(counting_runs(runs, "sys.exit(0)")) == 0
    assert runs.read_text() == "x" * restart.QUICK_EXITS_ALLOWED


def test_a_command_that_keeps_crashing_at_start_is_given_up_with_its_exit_code(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert restart.run_restarting(counting_runs(runs, "sys.exit(3)")) == 3
    assert runs.read_text() == "x" * restart.QUICK_EXITS_ALLOWED


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stopping_the_wrapper_lets_the_command_finish_and_returns_its_code_without_a_restart(
    tmp_path: Path, signum: int
) -> None:
    runs, stopped, ready = tmp_path / "runs", tmp_path / "stopped", tmp_path / "ready"
    graceful = (
        f"import signal, sys, time; open({str(runs)!r}, 'a').write('x')\n"
        # deliberate: the command takes its time to drain; the wrapper must wait for it
        f"def stop(*_): time.sleep(0.5); open({str(stopped)!r}, 'w').write('drained'); sys.exit(0)\n"
        f"signal.signal(signal.SIGTERM, stop); signal.signal(signal.SIGINT, stop)\n"
        f"{ready_then_wait(ready)}"
    )
    wrapper = start_wrapper(python(graceful), ready=ready)
    wrapper.send_signal(signum)
    assert wrapper.wait(timeout=10) == 0
    assert stopped.read_text() == "drained" and runs.read_text() == "x"


def test_the_command_runs_in_a_process_group_of_its_own_so_only_the_wrapper_signals_it(tmp_path: Path) -> None:
    groups = tmp_path / "groups"
    record = (
        f"import os; open({str(groups)!r}, 'w').write("
        f"f'{{os.getpgid(0)}} {{os.getpgid(os.getppid())}} {{os.getsid(0)}} {{os.getsid(os.getppid())}}')"
    )
    assert restart.run_restarting(python(record)) == 0
    own, wrappers, own_session, wrappers_session = groups.read_text().split()
    assert own != wrappers
    assert own_session == wrappers_session  # the stack's: see llm_ops.stack.StackProcess


def test_a_wrapper_killed_outright_takes_its_command_with_it(tmp_path: Path) -> None:
    child_pid, ready = tmp_path / "pid", tmp_path / "ready"
    sleeper = f"import os, time; open({str(child_pid)!r}, 'w').write(str(os.getpid()))\n{ready_then_wait(ready)}"
    wrapper = start_wrapper(python(sleeper), ready=ready)
    wrapper.kill()
    wrapper.wait()
    psutil.Process(int(child_pid.read_text())).wait(timeout=5)  # TimeoutExpired if it outlived the wrapper


def spawning(pid_file: Path, then: str) -> list[str]:
    """A command that starts a long-lived process of its own (as a worker starts vLLM's), then runs `then`."""
    return python(
        f"import subprocess, sys, signal, time\n"
        f"left = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"  # deliberate: lives on
        f"open({str(pid_file)!r}, 'w').write(str(left.pid))\n"
        f"{then}"
    )


def test_processes_a_command_leaves_behind_are_killed_when_it_ends(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    assert restart.run_restarting(spawning(pid_file, "sys.exit(3)")) == 3
    psutil.Process(int(pid_file.read_text())).wait(timeout=5)  # TimeoutExpired if it survived


def test_a_command_that_does_not_stop_in_time_is_killed_with_everything_it_started(tmp_path: Path) -> None:
    pid_file, ready = tmp_path / "pid", tmp_path / "ready"
    stubborn = spawning(pid_file, f"signal.signal(signal.SIGTERM, signal.SIG_IGN)\n{ready_then_wait(ready)}")
    wrapper = start_wrapper(["--stop-timeout", "1", *stubborn], ready=ready)
    started = time.monotonic()
    wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(timeout=10) == 128 + signal.SIGKILL
    assert 1.0 <= time.monotonic() - started < 5
    psutil.Process(int(pid_file.read_text())).wait(timeout=5)
