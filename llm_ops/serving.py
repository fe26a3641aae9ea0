"""What the HTTP servers of LLM Ops (worker, OpenAI-compatible API) share."""

from __future__ import annotations

import asyncio
import logging
import math
import signal
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar

import uvicorn
from fastapi import Request
from starlette.exceptions import HTTPException

from llm_ops.settings import LifecycleSettings

T = TypeVar("T")
logger = logging.getLogger(__name__)

def http_error_message(request: Request, error: HTTPException) -> str:
    """Starlette's and FastAPI's own refusals (no such route, a body that is not text), as sentences."""
    if error.status_code == 404:
        return f"no such endpoint: {request.method} {request.url.path}"
    if error.status_code == 405:
        return f"{request.url.path} does not take {request.method} requests"
    if error.detail == "There was an error parsing the body":  # FastAPI, for a body that is not UTF-8
        return "invalid request: the request body is not valid JSON text (UTF-8)"
    return str(error.detail)


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """Run `work`, cancelling it if the client disconnects first; None then.

    Listens for `http.disconnect` rather than polling `request.is_disconnected()`, as vLLM's
    `with_cancellation` does. Cancelling the work closes the engine or worker stream it reads,
    which aborts the generation.
    """
    work_task = asyncio.ensure_future(work)
    disconnect_task = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({work_task, disconnect_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work_task, disconnect_task):
            task.cancel()
        await asyncio.gather(work_task, disconnect_task, return_exceptions=True)
    if work_task.cancelled():
        return None
    return work_task.result()


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class DrainingServer(uvicorn.Server):
    """uvicorn with a graceful stop a load balancer can follow.

    On SIGTERM (or a first Ctrl-C): `on_drain` runs (a worker's health turns 503) and requests are
    still served for `drain_seconds`, so the front door's health check takes the server out of its
    rotation before it stops listening; nothing routed to it in that window is lost. Then uvicorn's
    own shutdown: no new connections, requests in flight get `graceful_timeout` seconds, the app's
    lifespan ends (a worker's engine shuts down). The process exits 0, not by re-raising the signal.
    More SIGTERMs change nothing; a second Ctrl-C stops at once.
    """

    def __init__(self, config: uvicorn.Config, drain_seconds: float, on_drain: Callable[[], None]) -> None:
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self.on_drain = on_drain
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.draining:
            if sig == signal.SIGINT:
                self.should_exit = self.force_exit = True
            return
        self.draining = True
        if self._loop is None or not self.started:  # not serving yet: nothing to drain
            logger.info("%s before the server started: stopping", signal.Signals(sig).name)
            self.should_exit = True
        else:
            logger.info("%s: draining for %g s, then stopping", signal.Signals(sig).name, self.drain_seconds)
            self.on_drain()
            self._loop.call_soon_threadsafe(self._loop.call_later, self.drain_seconds, self._stop)

    def _stop(self) -> None:
        self.should_exit = True


def serve(
    app: Any,
    host: str,
    port: int,
    log_level: str,
    lifecycle: LifecycleSettings,
    on_drain: Callable[[], None],
    **config: Any,
) -> None:
    """Run `app` with uvicorn until SIGTERM/Ctrl-C, then stop gracefully (`DrainingServer`)."""
    uvicorn_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        log_config=None,  # uvicorn's loggers propagate to ours (llm_ops.logs: JSON, with request ids)
        timeout_graceful_shutdown=math.ceil(lifecycle.graceful_timeout),
        # httptools (C) rather than h11 (pure Python): a third less CPU per streamed chunk
        # (benchmarks/worker_overhead.py). It once seemed to make Traefik cut streams after their
        # headers; that was Go's proxy re-reading a closed request body (golang/go#15527), which the
        # requestbody plugin prevents (docs/native-stack.md, "Streams and Traefik's proxy").
        http="httptools",
        **config,
    )
    DrainingServer(uvicorn_config, lifecycle.drain_seconds, on_drain).run()
