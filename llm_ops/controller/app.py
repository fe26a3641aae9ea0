"""The controller's HTTP surface: the endpoints and JSON of `fastchat.serve.controller`.

FastChat's workers and its OpenAI-compatible server work with it unchanged, and so do ours.
A background task drops workers whose heartbeats stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from llm_ops.access import RequireApiKey
from llm_ops.controller.registry import WorkerRegistry
from llm_ops.logs import RequestId, pass_request_id_on
from llm_ops.protocol.controller import (
    HeartbeatRequest,
    HeartbeatResponse,
    ModelList,
    ModelQuery,
    RegisteredWorker,
    RegisterWorkerRequest,
    RegisterWorkerResponse,
    WorkerAddress,
    WorkerList,
)
from llm_ops.protocol.worker import WorkerStatus
from llm_ops.serving import health

logger = logging.getLogger(__name__)
STATUS_TIMEOUT = 5.0
REGISTRATION_PATHS = frozenset({"/register_worker", "/receive_heart_beat", "/refresh_all_workers"})


def registry(request: Request) -> WorkerRegistry:
    found: WorkerRegistry = request.app.state.registry
    return found


async def fetch_status(request: Request, worker_name: str) -> WorkerStatus | None:
    http: httpx.AsyncClient = request.app.state.http
    try:
        response = await http.post(f"{worker_name}/worker_get_status", timeout=STATUS_TIMEOUT)
        response.raise_for_status()
        return WorkerStatus.model_validate(response.json())
    except (httpx.HTTPError, ValueError) as error:
        logger.warning("no status from worker %s: %r", worker_name, error)
        return None


async def register_worker(body: RegisterWorkerRequest, request: Request) -> JSONResponse:
    status = body.worker_status or await fetch_status(request, body.worker_name)
    if status is None:
        return JSONResponse(RegisterWorkerResponse(registered=False).model_dump(), status_code=502)
    registry(request).register(body.worker_name, status, body.check_heart_beat, body.multimodal)
    logger.info("registered worker %s serving %s", body.worker_name, ", ".join(status.model_names))
    return JSONResponse(RegisterWorkerResponse(registered=True).model_dump())


async def receive_heart_beat(body: HeartbeatRequest, request: Request) -> HeartbeatResponse:
    exist = registry(request).heartbeat(body.worker_name, body.queue_length)
    if not exist:
        logger.info("heartbeat from unknown worker %s: told to register", body.worker_name)
    return HeartbeatResponse(exist=exist)


async def refresh_all_workers(request: Request) -> None:
    """Ask every worker for its status again; drop the ones that do not answer."""
    known = registry(request)
    names = list(known.workers)
    statuses = await asyncio.gather(*(fetch_status(request, name) for name in names))
    for name, status in zip(names, statuses, strict=True):
        info = known.workers.get(name)
        if status is None:
            known.remove(name)
        elif info is not None:
            known.register(name, status, info.check_heart_beat, info.multimodal)


async def list_models(request: Request) -> ModelList:
    return ModelList(models=registry(request).models())


async def list_language_models(request: Request) -> ModelList:
    return ModelList(models=registry(request).models(multimodal=False))


async def list_multimodal_models(request: Request) -> ModelList:
    return ModelList(models=registry(request).models(multimodal=True))


async def get_worker_address(body: ModelQuery, request: Request) -> WorkerAddress:
    return WorkerAddress(address=registry(request).address_for(body.model) or "")


async def worker_get_status(request: Request) -> WorkerStatus:
    """The controller seen as one big worker (FastChat's hierarchical mode): the sum of its workers."""
    statuses = [s for s in await asyncio.gather(*(fetch_status(request, n) for n in registry(request).workers)) if s]
    return WorkerStatus(
        model_names=sorted({name for status in statuses for name in status.model_names}),
        speed=sum(status.speed for status in statuses),
        queue_length=sum(status.queue_length for status in statuses),
    )


async def list_workers(request: Request) -> WorkerList:
    known = registry(request)
    return WorkerList(
        workers=[
            RegisteredWorker(
                name=name,
                model_names=info.model_names,
                queue_length=info.queue_length,
                seconds_since_heart_beat=round(known.clock() - info.last_heart_beat, 3),
            )
            for name, info in known.workers.items()
        ]
    )


async def test_connection() -> str:
    return "success"


async def expire_workers(known: WorkerRegistry, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        for name in known.remove_expired():
            logger.info("dropped worker %s: no heartbeat for %.0f s", name, known.expiration)


def create_controller_app(
    known: WorkerRegistry,
    transport: httpx.AsyncBaseTransport | None = None,
    worker_headers: dict[str, str] | None = None,
    service_key: str | None = None,
) -> FastAPI:
    """`transport`: how to reach the workers (tests pass in-process apps); `worker_headers`: sent to
    them (the service key when the workers need one); `service_key`: what a worker must show to register
    and send heartbeats. Reading (models, worker addresses) stays open to the internal network: FastChat's
    own clients of a controller send no key."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        expiry = asyncio.create_task(expire_workers(known, every=min(1.0, known.expiration / 2)))
        hooks = {"request": [pass_request_id_on]}
        async with httpx.AsyncClient(transport=transport, headers=worker_headers, event_hooks=hooks) as http:
            app.state.http = http
            yield
        expiry.cancel()
        await asyncio.gather(expiry, return_exceptions=True)

    app = FastAPI(title="LLM Ops controller", lifespan=lifespan)
    app.state.registry = known
    fastchat_routes: list[tuple[str, Callable[..., Any]]] = [
        ("/register_worker", register_worker),
        ("/receive_heart_beat", receive_heart_beat),
        ("/refresh_all_workers", refresh_all_workers),
        ("/list_models", list_models),
        ("/list_language_models", list_language_models),
        ("/list_multimodal_models", list_multimodal_models),
        ("/get_worker_address", get_worker_address),
        ("/worker_get_status", worker_get_status),
    ]
    for path, endpoint in fastchat_routes:
        app.add_api_route(path, endpoint, methods=["POST"])
    app.add_api_route("/test_connection", test_connection, methods=["GET"])
    app.add_api_route("/list_workers", list_workers, methods=["GET"])
    app.add_api_route("/health", health, methods=["GET"])
    app.add_middleware(RequireApiKey, keys=frozenset(), service_key=service_key, service_paths=REGISTRATION_PATHS)
    app.add_middleware(RequestId)
    return app
