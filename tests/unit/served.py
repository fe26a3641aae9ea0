"""An app (a worker over the vLLM stand-in, ...) served by a real uvicorn on a loopback port, in a thread:
for tests about what real connections do (clients that leave, slow clients, many at once).

Without the app's lifespan unless asked (the router's reads its replicas in the background): a worker's
registers with a controller and handles SIGTERM, which only the main thread can (`tests.unit.drained_worker`
runs it in a process of its own)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.conftest import free_port, wait_until


@contextlib.contextmanager
def served(app: Any, lifespan: bool = False) -> Iterator[str]:
    """The app's base URL while it is served; its lifespan runs in the server's thread if `lifespan`."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", http="httptools", lifespan="on" if lifespan else "off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 10, "the test server to start", interval=0.01)
    assert server.started, "the test server's thread ended before it started"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class Served:
    """`app` served (`served`) from construction until `stop`, at `url`."""

    def __init__(self, app: Any, lifespan: bool = False) -> None:
        self.app = app
        self._serving = served(app, lifespan)
        self.url = self._serving.__enter__()

    def stop(self) -> None:
        self._serving.__exit__(None, None, None)

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Recorded:
    """ASGI middleware: appends (`name`, path) of every HTTP request to `sent`."""

    def __init__(self, app: ASGIApp, name: str, sent: list[tuple[str, str]]) -> None:
        self.app, self.name, self.sent = app, name, sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.sent.append((self.name, scope["path"]))
        await self.app(scope, receive, send)
