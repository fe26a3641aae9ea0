"""vLLM's own server as `llm-ops bench` starts it (llm_ops/bench/vllm_server.py): flags, environment, launcher."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from llm_ops.bench.vllm_server import (
    ServerError,
    reference_environment,
    running_server,
    server_command,
    service_argv,
)
from tests.conftest import free_port

pytestmark = pytest.mark.anyio
COMPOSE_FILE = Path(__file__).parents[3] / "docker-compose.yml"


def test_the_reference_server_is_vllms_own_with_the_default_services_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("llm_ops.models.default.ensure_default_model", lambda: Path("/cache/SmolLM2-135M-Instruct"))
    argv = service_argv(COMPOSE_FILE, "smollm2-135m-instruct")
    command = server_command(argv, 8123)
    assert command[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    flags = command[3:]
    assert flags[flags.index("--model") + 1] == "/cache/SmolLM2-135M-Instruct"
    assert flags[flags.index("--dtype") + 1] == "float32"
    assert flags[flags.index("--served-model-name") + 1] == "SmolLM2-135M-Instruct"
    assert flags[-4:] == ["--host", "127.0.0.1", "--port", "8123"]  # the last --port wins over the service's


def test_the_reference_server_gets_no_llm_ops_flag_or_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("llm_ops.models.default.ensure_default_model", lambda: Path("/m"))
    argv = service_argv(COMPOSE_FILE, "smollm2-135m-instruct", "--limit-worker-concurrency 3 --max-queue-wait=2")
    command = " ".join(server_command(argv, 8123))
    assert "--limit-worker-concurrency" not in command and "--max-queue-wait" not in command
    assert "VLLM_PLUGINS" not in reference_environment(argv)


def test_worker_flags_given_to_up_reach_vllm_after_the_service_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("llm_ops.models.default.ensure_default_model", lambda: Path("/m"))
    argv = service_argv(COMPOSE_FILE, "smollm2-135m-instruct", "--enforce-eager --max-model-len=512")
    flags = server_command(argv, 8123)
    assert "--max-model-len=512" in flags and "--enforce-eager" in flags


# A server that starts a process of its own (which lives until killed) and takes 0.3 s, on purpose, before it
# answers /health: the launcher must wait for it.
FAKE_SERVER = textwrap.dedent(
    """
    import http.server, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(sys.argv[2], "w").write(str(child.pid))
    time.sleep(0.3)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
    """
)


@pytest.mark.slow
async def test_launcher_waits_for_health_then_stops_the_whole_process_group(tmp_path: Path) -> None:
    port, pid_file = free_port(), tmp_path / "child.pid"
    command = [sys.executable, "-c", FAKE_SERVER, str(port), str(pid_file)]
    async with running_server(command, {}, f"http://127.0.0.1:{port}", tmp_path / "log", timeout=30) as seconds:
        assert 0.2 < seconds < 30
        child = psutil.Process(int(pid_file.read_text()))
        assert child.is_running()
    child.wait(timeout=5)  # raises TimeoutExpired while it runs
    assert not psutil.pid_exists(child.pid)


async def test_launcher_reports_a_server_that_exits_with_its_log(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import sys; print('no such model'); sys.exit(3)"]
    with pytest.raises(ServerError, match="(?s)exited with 3.*no such model"):
        async with running_server(command, {}, f"http://127.0.0.1:{free_port()}", tmp_path / "log", timeout=30):
            pass
