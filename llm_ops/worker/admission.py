"""How many requests a worker takes: at most `max_running` run, up to `max_waiting` more wait their
turn (first come, first served) for at most `max_wait_seconds`, and the rest are refused at once
with 429 (FastChat's ENGINE_OVERLOADED, 42903) and a Retry-After.

FastChat's worker guards its engine with a semaphore that leaked a slot on some error paths until
the worker stopped answering. Here a slot is a `Slot` whose `release` is idempotent, and every
holder releases it in a `finally` (see `worker.app`), so no exit path can keep it.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from llm_ops.protocol.errors import ErrorCode, RequestError


class Overloaded(RequestError):
    """Refused for lack of room; `retry_after` (seconds) becomes the Retry-After header."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(ErrorCode.ENGINE_OVERLOADED, message)
        self.retry_after = retry_after


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
        self._free = asyncio.Semaphore(max_running)

    async def acquire(self) -> Slot:
        """A running slot, after waiting if need be; `Overloaded` when the queue is full or the wait
        is too long. Cancelling the wait (the client left) leaves nothing behind."""
        if self._free.locked() and self.waiting >= self.max_waiting:
            raise Overloaded(
                f"the worker is at capacity ({self.running} requests running, {self.waiting} waiting): "
                f"retry after a moment",
                self.retry_after(),
            )
        self.waiting += 1
        try:
            async with asyncio.timeout(self.max_wait_seconds):
                await self._free.acquire()
        except TimeoutError:
            raise Overloaded(
                f"the request waited {self.max_wait_seconds:g} s for one of the worker's "
                f"{self.max_running} running slots: retry after a moment",
                self.retry_after(),
            ) from None
        finally:
            self.waiting -= 1
        self.running += 1
        return Slot(self)

    def _release(self) -> None:
        self.running -= 1
        self._free.release()

    def retry_after(self) -> int:
        """Seconds a client should wait: long enough for the queue ahead of it to move."""
        return max(1, math.ceil(self.max_wait_seconds / 2))
