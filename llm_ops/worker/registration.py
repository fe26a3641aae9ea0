"""A worker's registration with its controller: register, send heartbeats, register again when forgotten."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httpx

from llm_ops.controller.client import ControllerClient
from llm_ops.protocol.worker import WorkerStatus

logger = logging.getLogger(__name__)


async def keep_registered(
    controller: ControllerClient, worker_address: str, status: Callable[[], WorkerStatus], interval: float
) -> None:
    """Runs for the worker's lifetime. A controller that restarted or expired us says so in its
    heartbeat answer; an unreachable one, or any failure, is logged and tried again every `interval`."""
    registered = False
    while True:
        try:
            if registered:
                registered = await controller.heartbeat(worker_address, status().queue_length)
            if not registered:
                await controller.register(worker_address, status())
                registered = True
                logger.info("registered %s with the controller at %s", worker_address, controller.address)
        except httpx.HTTPError as error:
            registered = False
            logger.warning("controller %s: %r; trying again in %.0f s", controller.address, error, interval)
        except Exception:  # anything else (a malformed answer, a bug): said, and the heartbeats go on
            registered = False
            logger.exception(
                "registering with the controller %s failed; trying again in %.0f s", controller.address, interval
            )
        await asyncio.sleep(interval)
