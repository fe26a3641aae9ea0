"""The worker's HTTP surface: FastChat's worker endpoints under /api, plus /health.

Routes are thin: they hand the typed request to `WorkerService` and turn its results and its
`RequestError`s into responses. A generate request holds an admission slot from before its first
byte until its response is over, however it ends (`SlotStream`, `finally`). The app gets its
service from `open_service`, an async context manager entered for the app's lifetime, so tests can
run the same app over a fake engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from llm_ops.access import LimitBody, RequireApiKey
from llm_ops.logs import RequestId
from llm_ops.protocol.errors import ErrorCode, RequestError
from llm_ops.protocol.framing import encode_chunk
from llm_ops.protocol.worker import (
    FASTCHAT_FORMAT,
    LLM_OPS_FORMAT,
    ConvTemplateResponse,
    CountTokenRequest,
    CountTokenResponse,
    GenerateChunk,
    ModelDetails,
    WorkerGenerateBody,
    WorkerStatus,
    as_generate_request,
)
from llm_ops.serving import cancel_on_disconnect, describe_validation_errors, http_error_message
from llm_ops.settings import MAX_BODY_BYTES
from llm_ops.worker.admission import Overloaded, Slot
from llm_ops.worker.metrics import CONTENT_TYPE_LATEST
from llm_ops.worker.service import PreparedRequest, WorkerService

OpenService = Callable[[], contextlib.AbstractAsyncContextManager[WorkerService]]
Background = Callable[[WorkerService], Awaitable[None]]  # runs while the app serves, e.g. heartbeats
T = TypeVar("T")

NOT_FIELDS = frozenset({"body", LLM_OPS_FORMAT, FASTCHAT_FORMAT})  # parts of error locations

router = APIRouter(prefix="/api")


def service(request: Request) -> WorkerService:
    worker: WorkerService = request.app.state.worker
    return worker


class SlotStream(StreamingResponse):
    """A streamed answer that gives its admission slot back when the response ends, even if the
    client left before the stream's first chunk (a generator that never started has no `finally`)."""

    def __init__(self, content: AsyncIterator[bytes], slot: Slot) -> None:
        super().__init__(content, media_type="text/plain")
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()


async def prepare_and_admit(
    worker: WorkerService, body: WorkerGenerateBody, request: Request
) -> tuple[PreparedRequest, Slot] | None:
    """The prepared request and its running slot; None if the client left while waiting for one."""
    generate = as_generate_request(body)
    try:
        prepared = await worker.prepare(generate)
        slot = await cancel_on_disconnect(request, worker.admit())
    except RequestError as error:
        worker.metrics.count(generate.generation_mode, "overloaded" if isinstance(error, Overloaded) else "refused")
        raise
    if slot is None:
        worker.metrics.count(generate.generation_mode, "aborted")
        return None
    return prepared, slot


@router.post("/worker_generate_stream", response_class=StreamingResponse)
async def worker_generate_stream(body: WorkerGenerateBody, request: Request) -> Response:
    worker = service(request)
    admitted = await prepare_and_admit(worker, body, request)
    if admitted is None:
        return Response(status_code=499)
    prepared, slot = admitted
    return SlotStream(_framed(worker, prepared), slot)


async def _framed(worker: WorkerService, prepared: PreparedRequest) -> AsyncIterator[bytes]:
    async with contextlib.aclosing(worker.stream(prepared)) as chunks:
        async for chunk in chunks:
            yield encode_chunk(chunk)


@router.post("/worker_generate", response_model=GenerateChunk)
async def worker_generate(body: WorkerGenerateBody, request: Request) -> Response:
    worker = service(request)
    admitted = await prepare_and_admit(worker, body, request)
    if admitted is None:
        return Response(status_code=499)
    prepared, slot = admitted
    try:
        result = await cancel_on_disconnect(request, worker.generate(prepared))
    finally:
        slot.release()
    if result is None:  # the client left; nobody reads this answer
        return Response(status_code=499)
    status = 200 if result.error_code == 0 else 500
    return JSONResponse(result.model_dump(), status_code=status)


@router.post("/worker_get_status")
async def worker_get_status(request: Request) -> WorkerStatus:
    return service(request).status()


@router.post("/count_token")
async def count_token(body: CountTokenRequest, request: Request) -> CountTokenResponse:
    count = await asyncio.to_thread(service(request).count_tokens, body.prompt)
    return CountTokenResponse(count=count)


@router.post("/worker_get_conv_template")
async def worker_get_conv_template(request: Request) -> ConvTemplateResponse:
    return ConvTemplateResponse(conv=service(request).renderer.describe())


@router.post("/model_details")
async def model_details(request: Request) -> ModelDetails:
    return ModelDetails(context_length=service(request).engine.max_model_len)


async def health(request: Request) -> JSONResponse:
    """200 while the worker should get requests; 503 (do not route here) when its engine failed or it
    is draining. Also says what it is doing, counted by the worker and by the engine itself."""
    worker = service(request)
    counts = {
        "running": worker.admission.running,
        "waiting": worker.admission.waiting,
        "engine_requests": worker.engine.running_requests(),
    }
    try:
        await worker.engine.check_health()
    except Exception as error:  # any failure of the check means: do not route here
        return JSONResponse({"status": "unhealthy", "detail": str(error)} | counts, status_code=503)
    if worker.draining:
        return JSONResponse({"status": "draining"} | counts, status_code=503)
    return JSONResponse({"status": "ok"} | counts)


async def metrics(request: Request) -> Response:
    """Prometheus metrics (llm_ops.worker.metrics); not routed by Traefik, which only reaches /api/."""
    worker = service(request)
    body = worker.metrics.render(worker.admission.running, worker.admission.waiting)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def start_draining(app: FastAPI) -> None:
    """From now on /health says 503 "draining" (called on SIGTERM; requests are still served)."""
    worker: WorkerService | None = getattr(app.state, "worker", None)
    if worker is not None:
        worker.draining = True


def _error(status: int, code: ErrorCode, message: str) -> JSONResponse:
    body = RequestError(code, message).to_response().model_dump()
    return JSONResponse(body, status_code=status)


async def _request_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestError)
    response = _error(error.status_code, error.code, error.message)
    if isinstance(error, Overloaded):
        response.headers["Retry-After"] = str(error.retry_after)
    return response


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    code = ErrorCode.VALIDATION_TYPE_ERROR if error.status_code < 500 else ErrorCode.INTERNAL_ERROR
    return _error(error.status_code, code, http_error_message(request, error))


async def _validation_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    invalid = describe_validation_errors(error.errors(), not_fields=NOT_FIELDS)
    code = ErrorCode.PARAM_OUT_OF_RANGE if invalid.out_of_range else ErrorCode.VALIDATION_TYPE_ERROR
    return _error(400, code, invalid.message())


def create_worker_app(
    open_service: OpenService,
    background: Background | None = None,
    api_keys: frozenset[str] = frozenset(),
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """`api_keys`: when given, every /api/ route needs one (/health stays open for the front door)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_service() as worker:
            app.state.worker = worker
            task = asyncio.ensure_future(background(worker)) if background else None
            try:
                yield
            finally:
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)

    app = FastAPI(title="LLM Ops worker", lifespan=lifespan)
    app.include_router(router)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_middleware(LimitBody, max_bytes=max_body_bytes, refuse=_error)
    app.add_middleware(RequireApiKey, keys=api_keys, protected_prefixes=("/api/",), refuse=_error)
    app.add_middleware(RequestId)
    return app
