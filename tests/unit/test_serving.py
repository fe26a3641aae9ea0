"""LLM Ops' own servers (the controller, the router) drain on SIGTERM as the workers do: /health says 503
at once, so the front door's health check routes elsewhere, while they still serve until the drain is over."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.conftest import draining, free_port, wait_until, wait_until_serving

START_TIMEOUT = 60.0
DRAIN_SECONDS = 3.0
SERVERS = {
    "controller": ["controller"],
    "router": ["router", "--controller-address", "http://127.0.0.1:9"],  # /health asks no controller
}


@pytest.mark.slow
@pytest.mark.parametrize("server", SERVERS)
def test_sigterm_turns_health_503_for_the_drain_then_the_server_exits_0(server: str) -> None:
    port = free_port()
    command = [sys.executable, "-m", "llm_ops", *SERVERS[server], "--port", str(port)]
    process = subprocess.Popen([*command, "--drain-seconds", str(DRAIN_SECONDS)])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, f"{url}/health", START_TIMEOUT)
        process.send_signal(signal.SIGTERM)
        wait_until(lambda: draining(url), 1.0, "/health to say 503, draining")
        assert process.wait(timeout=DRAIN_SECONDS + 10) == 0
    finally:
        process.kill()
        process.wait()
