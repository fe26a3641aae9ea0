"""What a person sees running `llm-ops up` at a terminal: readable lines, no polls, the engine's start as
progress, and a Ctrl-C that stops everything without a traceback, after the answers in flight have
ended. The stack runs under a pseudo-terminal, as in a shell: it is its controlling terminal, and
Ctrl-C is the byte a keyboard sends."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import free_port
from tests.integration.conftest import COMPOSE_FILE, LONG_STORY, MODEL, chat

pytestmark = pytest.mark.integration
START_TIMEOUT = 600.0
STOP_TIMEOUT = 90.0
AFTER_BANNER = 8.0  # seconds of serving before Ctrl-C: Traefik's health checks and heartbeats poll meanwhile
BANNER_END = "Stop with Ctrl-C."
ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Terminal:
    before_banner: list[str]
    after_banner: list[str]
    exit_code: int | None
    seconds_to_stop: float
    left_running: list[str]
    streamed_through_ctrl_c: list[dict[str, object]]

    @property
    def lines(self) -> list[str]:
        return self.before_banner + self.after_banner


def read_until(fd: int, output: bytearray, done: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the terminal closed: everything on it has exited
                return done == ""
            if not data:
                return done == ""
            output += data
            if done and done.encode() in output:
                return True
    return False


def lines_of(output: bytes) -> list[str]:
    return ANSI_CODE.sub("", output.decode("utf-8", "replace")).replace("\r", "").splitlines()


@pytest.fixture(scope="module")
def terminal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Terminal]:
    state_dir = tmp_path_factory.mktemp("terminal-stack")
    https_port = free_port()
    command = [
        sys.executable, "-m", "llm_ops", "up", "--state-dir", str(state_dir), "--compose-file", str(COMPOSE_FILE),
        "--https-port", str(https_port), "--http-port", str(free_port()), "--admin-port", str(free_port()),
        "--port", str(free_port()), "--controller-port", str(free_port()), "--router-port", str(free_port()),
        "--heart-beat-interval", "1",
    ]  # fmt: skip
    environment = {name: value for name, value in os.environ.items() if not name.startswith("LLM_OPS_")}
    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal is its stdin, stdout, stderr and controlling terminal
        os.execve(sys.executable, command, environment)
    output = bytearray()
    try:
        assert read_until(fd, output, BANNER_END, START_TIMEOUT), "no banner:\n" + "\n".join(lines_of(output)[-60:])
        banner_at = len(output)
        read_until(fd, output, "\x00never", AFTER_BANNER)
        answer = StreamedAnswer(f"https://localhost:{https_port}", state_dir / "tls" / "ca.pem")
        answer.start()
        assert answer.streaming.wait(timeout=60), "no answer streamed"
        os.write(fd, b"\x03")  # Ctrl-C
        pressed = time.monotonic()
        read_until(fd, output, "", STOP_TIMEOUT)
        _, status = os.waitpid(pid, 0)
        stopped = time.monotonic() - pressed
        answer.join(timeout=10)
        left = [" ".join(p.cmdline()) for p in psutil.process_iter() if str(state_dir) in " ".join(_cmdline(p))]
        exit_code = os.waitstatus_to_exitcode(status)
        yield Terminal(
            lines_of(output[:banner_at]), lines_of(output[banner_at:]), exit_code, stopped, left, answer.chunks
        )
    finally:
        os.close(fd)
        with_state_dir = [p for p in psutil.process_iter() if str(state_dir) in " ".join(_cmdline(p))]
        for process in with_state_dir:
            process.kill()


class StreamedAnswer(threading.Thread):
    """A long chat answer streamed through Traefik (FastChat's route), its chunks as they arrive."""

    def __init__(self, base_url: str, ca_file: Path) -> None:
        super().__init__(daemon=True)
        self.base_url, self.ca_file = base_url, ca_file
        self.chunks: list[dict[str, object]] = []
        self.streaming = threading.Event()

    def run(self) -> None:
        body = chat(messages=LONG_STORY, max_new_tokens=200)
        tls = ssl.create_default_context(cafile=str(self.ca_file))
        with (
            httpx.Client(base_url=self.base_url, verify=tls, timeout=120) as client,
            client.stream("POST", f"/api/{MODEL}/worker_generate_stream", json=body) as response,
        ):
            for raw in response.iter_raw():
                self.streaming.set()
                self.chunks.extend(json.loads(part) for part in raw.split(b"\0") if part.strip())


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def payload(line: str) -> str:
    """A line without honcho's `HH:MM:SS name | ` prefix."""
    return line.split(" | ", 1)[1] if " | " in line else line


def test_our_servers_write_text_lines_not_json_on_a_terminal(terminal: Terminal) -> None:
    json_lines = [line for line in terminal.lines if payload(line).startswith('{"')]
    assert not json_lines, json_lines[:5]
    assert any(
        re.search(r"controller +\| .* INFO: +uvicorn.error: Application startup complete", line)
        for line in terminal.lines
    )


def test_health_checks_heartbeats_and_metrics_scrapes_are_not_logged(terminal: Terminal) -> None:
    polls = [
        line for line in terminal.lines if re.search(r'"(GET /health|GET /metrics|POST /receive_heart_beat) ', line)
    ]
    assert not polls, polls[:5]


def test_traefik_does_not_warn_about_a_worker_that_is_still_starting(terminal: Terminal) -> None:
    warnings = [line for line in terminal.before_banner if "Health check failed" in line]
    assert not warnings, warnings[:5]


def test_every_entrypoint_sets_how_alias_headers_are_handled_so_traefik_does_not_warn(terminal: Terminal) -> None:
    warnings = [line for line in terminal.lines if "aliasHeadersStrategy is not configured" in line]
    assert not warnings, warnings[:3]


def test_the_engines_start_is_shown_as_progress_before_the_banner(terminal: Terminal) -> None:
    progress = [payload(line) for line in terminal.before_banner if line[9:].startswith("llm-ops ")]
    phases = [line.split(" (")[0] for line in progress if not line.startswith("still starting")]
    assert phases[-3:] == [
        phases[-3],
        "the engine is ready; its API server starts",
        "the worker serves; checking its routes through Traefik",
    ], progress
    assert any(phase.startswith("loading the model") for phase in phases), progress
    assert all(re.search(r"\(\d+ s\)$", line) for line in progress), progress


def test_ctrl_c_stops_every_process_quickly_without_a_traceback(terminal: Terminal) -> None:
    assert not [line for line in terminal.lines if "Traceback" in line]
    assert terminal.exit_code in (0, 130), terminal.after_banner[-20:]
    assert terminal.seconds_to_stop < 60, terminal.after_banner[-20:]
    assert not terminal.left_running
    assert any("worker stopped" in line for line in terminal.after_banner)


def test_an_answer_streaming_when_ctrl_c_is_pressed_still_ends_complete(terminal: Terminal) -> None:
    chunks = terminal.streamed_through_ctrl_c
    assert chunks and chunks[-1].get("finish_reason") in ("stop", "length"), chunks[-1:]
