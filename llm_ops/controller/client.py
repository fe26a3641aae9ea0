"""Talking to a controller, as workers do: register, send heartbeats."""

from __future__ import annotations

import httpx

from llm_ops.protocol.controller import (
    HeartbeatRequest,
    HeartbeatResponse,
    RegisterWorkerRequest,
)
from llm_ops.protocol.worker import WorkerStatus


class ControllerClient:
    def __init__(self, http: httpx.AsyncClient, address: str) -> None:
        self.http = http
        self.address = address.rstrip("/")

    async def register(self, worker_address: str, status: WorkerStatus) -> None:
        body = RegisterWorkerRequest(worker_name=worker_address, worker_status=status)
        (await self.http.post(f"{self.address}/register_worker", json=body.model_dump())).raise_for_status()

    async def heartbeat(self, worker_address: str, queue_length: int) -> bool:
        """False when the controller does not know the worker (it restarted, or expired it)."""
        body = HeartbeatRequest(worker_name=worker_address, queue_length=queue_length)
        response = await self.http.post(f"{self.address}/receive_heart_beat", json=body.model_dump())
        response.raise_for_status()
        return HeartbeatResponse.model_validate(response.json()).exist
