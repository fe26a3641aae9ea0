"""Target c: vLLM's own OpenAI server, started with the flags of the stack's worker, without LLM Ops.

The worker is vLLM's server with LLM Ops inside; the reference is the same server, same flags and
environment (`llm_ops.worker.launch.vllm_argv`), with LLM Ops' flags and its plugin left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import httpx

from llm_ops.frontdoor.compose import load_compose
from llm_ops.worker.launch import CONTAINER_PORT, parse_worker_args, server_environment, vllm_argv, worker_options
from llm_ops.worker.vllm_api import PLUGINS_VARIABLE, REFERENCE_SERVER_MODULE

LOOPBACK = "127.0.0.1"


class ServerError(Exception):
    """The vLLM server did not start, or stopped before it answered."""


def service_argv(compose_file: Path, service: str, extra_flags: str = "") -> list[str]:
    """The worker's flags of a compose service, with `extra_flags` after its own (they win)."""
    model = load_compose(compose_file).model(service)
    return ["--kind", model.kind, "--port", str(CONTAINER_PORT), *model.command, *shlex.split(extra_flags)]


def server_command(worker_argv: list[str], port: int) -> list[str]:
    """vLLM's own server with the worker's flags, on loopback at `port`."""
    flags = vllm_argv(worker_argv)
    return [sys.executable, "-m", REFERENCE_SERVER_MODULE, *flags, "--host", LOOPBACK, "--port", str(port)]


def reference_environment(worker_argv: list[str]) -> dict[str, str]:
    """The worker's environment, without the LLM Ops plugin."""
    environment = server_environment(worker_options(parse_worker_args(worker_argv)), dict(os.environ))
    environment.pop(PLUGINS_VARIABLE)
    environment["HF_HUB_OFFLINE"] = "1"
    return environment


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def running_server(
    command: list[str], environment: Mapping[str, str], base_url: str, log_file: Path, timeout: float
) -> AsyncIterator[float]:
    """Run `command` in its own session until `base_url`/health answers 200; yields the seconds that took.

    vLLM's engine-core processes outlive their parent, so on exit the whole process group is stopped:
    SIGTERM, then SIGKILL for what is left after 30 s.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=log, stderr=asyncio.subprocess.STDOUT, env=dict(environment), start_new_session=True
        )
    try:
        yield await _wait_healthy(process, f"{base_url}/health", log_file, timeout)
    finally:
        await _stop_group(process)


async def _wait_healthy(process: asyncio.subprocess.Process, url: str, log_file: Path, timeout: float) -> float:
    start = time.monotonic()
    async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
        while time.monotonic() - start < timeout:
            if process.returncode is not None:
                raise ServerError(f"the vLLM server exited with {process.returncode}:\n{_tail(log_file)}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(url)).status_code == 200:
                    return time.monotonic() - start
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(process.wait(), 1)
    raise ServerError(f"the vLLM server did not answer {url} within {timeout:.0f} s:\n{_tail(log_file)}")


async def _stop_group(process: asyncio.subprocess.Process, grace: float = 30) -> None:
    """SIGTERM the group (its own session: the group id is the leader's pid), SIGKILL what is left after `grace`."""
    _signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _signal_group(process.pid, 0) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    _signal_group(process.pid, signal.SIGKILL)
    await process.wait()


def _signal_group(group: int, sig: int) -> bool:
    """False when no process of the group is left."""
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        return False
    return True


def _tail(log_file: Path, lines: int = 30) -> str:
    return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])
