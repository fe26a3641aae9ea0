"""How LLM Ops' own HTTP servers (controller, router) run and stop: uvicorn with a drain, during which
their /health says 503.

Workers are vLLM's server, which has its own (`llm_ops.worker.plugin`)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from llm_ops.settings import LifecycleSettings

T = TypeVar("T")
# Longer than Traefik's idle timeout (60 s): Traefik never reuses a connection the server is closing.
KEEP_ALIVE_SECONDS = 75
logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """uvicorn with a graceful stop a load balancer can follow.

    On SIGTERM (or a first Ctrl-C): `on_drain` runs (the server's /health turns 503) and requests are
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
        # A signal handler runs in the context of whatever the main thread was doing: often a request's,
        # whose id would then mark the drain's log line.
        contextvars.Context().run(self._begin_stop, sig)

    def _begin_stop(self, sig: int) -> None:
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


async def health(request: Request) -> JSONResponse:
    """The route /health of a server `serve` runs: 200 while it serves, 503 once it drains."""
    if getattr(request.app.state, "draining", False):
        return JSONResponse({"status": "draining"}, status_code=503)
    return JSONResponse({"status": "ok"})


def serve(app: FastAPI, host: str, port: int, log_level: str, lifecycle: LifecycleSettings, **config: Any) -> None:
    """Run `app` with uvicorn until SIGTERM/Ctrl-C, then stop gracefully (`DrainingServer`); its `health`
    route says 503 from the drain's start."""
    uvicorn_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        log_config=None,  # uvicorn's loggers propagate to ours (llm_ops.logs: JSON, with request ids)
        timeout_graceful_shutdown=math.ceil(lifecycle.graceful_timeout),
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        # httptools (C) rather than h11 (pure Python): a third less CPU per streamed chunk
        # (benchmarks/worker_overhead.py). It once seemed to make Traefik cut streams after their
        # headers; that was Go's proxy re-reading a closed request body (golang/go#15527), which the
        # requestbody plugin prevents (docs/native-stack.md, "Streams and Traefik's proxy").
        http="httptools",
        **config,
    )
    DrainingServer(uvicorn_config, lifecycle.drain_seconds, lambda: setattr(app.state, "draining", True)).run()
