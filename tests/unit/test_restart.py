"""Native replicas come back after a crash, like containers with `restart: unless-stopped`, but not forever."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from llm_ops import restart


@pytest.fixture(autouse=True)
def no_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(restart, "RESTART_DELAY_SECONDS", 0.0)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_command_that_ends_cleanly_is_not_restarted(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert restart.run_restarting(python(f"open({str(runs)!r}, 'a').write('x')")) == 0
    assert runs.read_text() == "x"


def test_a_crashed_command_is_restarted(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    crash_once = (
        f"import sys; f = open({str(runs)!r}, 'a+'); f.write('x'); f.seek(0); sys.exit(9 if len(f.read()) == 1 else 0)"
    )
    assert restart.run_restarting(python(crash_once)) == 0
    assert runs.read_text() == "xx"


def test_a_command_that_keeps_crashing_at_start_is_given_up_with_its_exit_code(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert restart.run_restarting(python(f"import sys; open({str(runs)!r}, 'a').write('x'); sys.exit(3)")) == 3
    assert runs.read_text() == "x" * restart.QUICK_CRASHES_ALLOWED


def test_a_command_stopped_by_sigterm_is_not_restarted(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    sigterm_self = f"import os, signal; open({str(runs)!r}, 'a').write('x'); os.kill(os.getpid(), signal.SIGTERM)"
    assert restart.run_restarting(python(sigterm_self)) == -15
    assert runs.read_text() == "x"
