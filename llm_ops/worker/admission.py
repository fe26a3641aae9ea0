"""How many requests a worker takes: at most `max_running` run, up to `max_waiting` more wait their
turn (first come, first served) for at most `max_wait_seconds`, and the rest are refused at once
with 429 (FastChat's ENGINE_OVERLOADED, 42903) and a Retry-After.

Admission covers every generation route of the worker, FastChat's and vLLM's OpenAI ones alike
(`AdmitGeneration`, an ASGI middleware): the controller's queue lengths, and so the choice of a
replica, count both. vLLM's own queue bound (`--max-num-queued-reqs`) answers 503 instead, meant
for "try another instance"; ours says when to come back.

FastChat's worker guards its engine with a semaphore that leaked a slot on some error paths until
the worker stopped answering. Here a slot is a `Slot` whose `release` is idempotent, and the
middleware releases it in a `finally` once the response has ended, so no exit path can keep it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge
from starlette.types import ASGIApp, Receive, Scope, Send

from llm_ops.access import refusal, replay, unless_client_leaves
from llm_ops.protocol.errors import Overloaded

# In vLLM's registry (the default one), so they show on the worker's /metrics beside vllm:*.
REFUSED = Counter("llm_ops_requests_refused", "Generation requests refused by admission", ["reason"])
RUNNING = Gauge("llm_ops_requests_running", "Generation requests holding a running slot")
WAITING = Gauge("llm_ops_requests_waiting", "Generation requests waiting for a running slot")
# The router reads these three to know how much more a worker takes (`llm_ops.router.replicas`).
CAPACITY = Gauge("llm_ops_requests_capacity", "Generation requests this worker runs at once")


@dataclass
class Slot:
    admission: Admission
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission._release()


class Admission:
    def __init__(self, max_running: int, max_waiting: int, max_wait_seconds: float) -> None:
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.max_wait_seconds = max_wait_seconds
        self.running = 0
        self.waiting = 0
        self.closed = False  # shutting down: nothing new is admitted
        self._free = asyncio.Semaphore(max_running)
        CAPACITY.set(max_running)

    async def acquire(self) -> Slot:
        """A running slot, after waiting if need be; `Overloaded` when the queue is full or the wait
        is too long. Cancelling the wait (the client left) leaves nothing behind."""
        if self.closed:
            REFUSED.labels("shutting_down").inc()
            raise Overloaded("this worker is shutting down: retry, another replica will answer", 1, status=503)
        if self._free.locked() and self.waiting >= self.max_waiting:
            REFUSED.labels("full").inc()
            raise Overloaded(
                f"the worker is at capacity ({self.running} requests running, {self.waiting} waiting): "
                f"retry after a moment",
                self.retry_after(),
            )
        self._count(waiting=1)
        try:
            async with asyncio.timeout(self.max_wait_seconds):
                await self._free.acquire()
        except TimeoutError:
            REFUSED.labels("waited_too_long").inc()
            raise Overloaded(
                f"the request waited {self.max_wait_seconds:g} s for one of the worker's "
                f"{self.max_running} running slots: retry after a moment",
                self.retry_after(),
            ) from None
        finally:
            self._count(waiting=-1)
        self._count(running=1)
        return Slot(self)

    def _release(self) -> None:
        self._count(running=-1)
        self._free.release()

    def _count(self, running: int = 0, waiting: int = 0) -> None:
        self.running += running
        self.waiting += waiting
        RUNNING.inc(running)
        WAITING.inc(waiting)

    def retry_after(self) -> int:
        """Seconds a client should wait: long enough for the queue ahead of it to move."""
        return max(1, math.ceil(self.max_wait_seconds / 2))


class AdmitGeneration:
    """ASGI middleware: a request to one of `paths` holds a running slot of `admission_of(scope)` from
    before the app sees it until its response has ended, however it ends. A client that leaves while
    waiting for a slot is let go and leaves nothing behind. Runs inside `LimitBody`, which has read
    the body: after it, the next message can only be the client leaving."""

    def __init__(self, app: ASGIApp, paths: frozenset[str], admission_of: Callable[[Scope], Admission]) -> None:
        self.app = app
        self.paths = paths
        self.admission_of = admission_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        body = await receive()
        try:
            slot = await unless_client_leaves(self.admission_of(scope).acquire(), receive, _release)
        except Overloaded as refused:
            await refusal(scope, refused)(scope, receive, send)
            return
        if slot is None:
            return
        try:
            await self.app(scope, replay(body, receive), send)
        finally:
            slot.release()


async def _release(slot: Slot) -> None:
    slot.release()  # admitted in the same instant the client left
