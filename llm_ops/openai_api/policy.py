"""Which replica of a model gets the next request.

A policy names a worker for a model (`choose`) and hears about one that could not be reached
(`unreachable`). `LeastLoaded` asks the controller, whose dispatch picks the shortest queue from
the workers' heartbeats (FastChat's `shortest_queue`). A smarter policy (prefix-cache aware, say,
which would look at the request's prompt) is one more class in `POLICIES`.
"""

from __future__ import annotations

import logging
from typing import Protocol

import httpx

from llm_ops.controller.client import ControllerClient

logger = logging.getLogger(__name__)


class NoController(Exception):
    """The controller that knows the workers cannot be reached."""


class ReplicaPolicy(Protocol):
    async def choose(self, model: str, body: bytes) -> str | None:
        """A worker's base URL (http://host:port) for `model`, or None if no worker serves it."""
        ...

    async def unreachable(self, worker: str) -> None:
        """`worker` refused a connection or is shutting down."""
        ...


class LeastLoaded:
    def __init__(self, controller: ControllerClient) -> None:
        self.controller = controller

    async def choose(self, model: str, body: bytes) -> str | None:
        try:
            address = await self.controller.worker_address(model)
        except httpx.HTTPError as error:
            raise NoController(f"the controller cannot be reached: {error!r}") from error
        return worker_base_url(address) if address else None

    async def unreachable(self, worker: str) -> None:
        # Dead or draining, and the controller may not know yet: have it check its workers now.
        try:
            await self.controller.refresh_all_workers()
        except httpx.HTTPError as error:
            logger.warning("the controller could not refresh its workers: %r", error)


def worker_base_url(address: str) -> str:
    """Workers register FastChat's address, http://host:port/api; their OpenAI routes are at http://host:port."""
    return address.rstrip("/").removesuffix("/api")


POLICIES = {"least-loaded": LeastLoaded}
