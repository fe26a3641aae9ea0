"""A worker told to stop while its engine is still starting stops: `docker compose stop` or Ctrl-C during a
model's start does not wait out the grace period, and the worker never comes up to serve.

The worker runs on its own (`llm-ops worker`, the packaged model, the real vLLM engine), as start_chat.sh
runs it in a container."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import free_port
from tests.integration.conftest import wait_for_line

pytestmark = pytest.mark.integration

ENGINE_STARTING = "Initializing a V1 LLM engine"  # the engine's process logs it; the server waits for it
SERVING = "Application startup complete"
START_TIMEOUT = 300.0
STOP_TIMEOUT = 30.0  # vLLM gives the engine 5 s to stop before it kills it


def test_sigterm_while_the_engine_starts_stops_the_worker_and_every_engine_process(tmp_path: Path) -> None:
    log_file = tmp_path / "worker.log"
    with log_file.open("wb") as output:
        worker = subprocess.Popen(
            [sys.executable, "-m", "llm_ops", "worker", "--port", str(free_port())],
            stdout=output, stderr=output, process_group=0,  # as in a container: the signal reaches the worker alone
        )  # fmt: skip
    try:
        wait_for_line(worker, log_file, ENGINE_STARTING, START_TIMEOUT)
        engine_processes = psutil.Process(worker.pid).children(recursive=True)
        assert SERVING not in log_file.read_text(), "the engine started before the test could stop it"

        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=STOP_TIMEOUT)
        _, alive = psutil.wait_procs(engine_processes, timeout=10)
    finally:  # whatever is left, after the test looked
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
    log = log_file.read_text()
    assert code == 0, log
    assert "SIGTERM while the worker was starting: stopping" in log
    assert SERVING not in log
    assert not alive, f"left running: {alive}"
