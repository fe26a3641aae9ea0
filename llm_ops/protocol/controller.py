"""The controller's request and response bodies: FastChat's controller protocol, typed.

These bodies come from FastChat's own workers and servers as well as ours, so unknown fields are
ignored (FastChat adds some across versions) while the fields that are there must be right.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from llm_ops.protocol.worker import WorkerStatus


class FastChatBody(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RegisterWorkerRequest(FastChatBody):
    worker_name: str  # the worker's base URL: the controller calls worker_name + "/worker_get_status"
    check_heart_beat: bool = True
    worker_status: WorkerStatus | None = None  # absent: the controller asks the worker
    multimodal: bool = False


class RegisterWorkerResponse(BaseModel):
    registered: bool


class HeartbeatRequest(FastChatBody):
    worker_name: str
    queue_length: int


class HeartbeatResponse(BaseModel):
    exist: bool  # False: the controller does not know this worker, which must register again


class ModelQuery(FastChatBody):
    model: str


class WorkerAddress(BaseModel):
    address: str  # "" when no worker serves the model, as FastChat answers


class ModelList(BaseModel):
    models: list[str]


class RegisteredWorker(BaseModel):
    name: str
    model_names: list[str]
    queue_length: int
    seconds_since_heart_beat: float


class WorkerList(BaseModel):
    """`GET /list_workers`: not in FastChat's protocol; for operators and tests."""

    workers: list[RegisteredWorker]
