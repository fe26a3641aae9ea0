"""The worker's HTTP surface: FastChat's worker endpoints under /api, plus /health.

Routes are thin: they hand the typed request to `WorkerService` and turn its results and its
`RequestError`s into responses. The app gets its service from `open_service`, an async context
manager entered for the app's lifetime, so tests can run the same app over a fake engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

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
from llm_ops.worker.service import PreparedRequest, WorkerService

OpenService = Callable[[], contextlib.AbstractAsyncContextManager[WorkerService]]
Background = Callable[[WorkerService], Awaitable[None]]  # runs while the app serves, e.g. heartbeats
T = TypeVar("T")

# pydantic error types that mean "a number outside its allowed range".
RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})

BODY_LOCATIONS = frozenset({"body", LLM_OPS_FORMAT, FASTCHAT_FORMAT})  # not field names: left out of messages

router = APIRouter(prefix="/api")


def service(request: Request) -> WorkerService:
    worker: WorkerService = request.app.state.worker
    return worker


@router.post("/worker_generate_stream", response_class=StreamingResponse)
async def worker_generate_stream(body: WorkerGenerateBody, request: Request) -> StreamingResponse:
    worker = service(request)
    prepared = await worker.prepare(as_generate_request(body))
    return StreamingResponse(_framed(worker, prepared), media_type="text/plain")


async def _framed(worker: WorkerService, prepared: PreparedRequest) -> AsyncIterator[bytes]:
    async with contextlib.aclosing(worker.stream(prepared)) as chunks:
        async for chunk in chunks:
            yield encode_chunk(chunk)


@router.post("/worker_generate", response_model=GenerateChunk)
async def worker_generate(body: WorkerGenerateBody, request: Request) -> Response:
    worker = service(request)
    prepared = await worker.prepare(as_generate_request(body))
    result = await _cancel_on_disconnect(request, worker.generate(prepared))
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
    try:
        await service(request).engine.check_health()
    except Exception as error:  # any failure of the check means: do not route here
        return JSONResponse({"status": "unhealthy", "detail": str(error)}, status_code=503)
    return JSONResponse({"status": "ok"})


async def _cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """Run `work`, cancelling it if the client disconnects first.

    Listens for `http.disconnect` rather than polling `request.is_disconnected()`, as vLLM's
    `with_cancellation` does. Cancelling the work closes the engine stream, which aborts the request.
    """
    work_task = asyncio.ensure_future(work)
    disconnect_task = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({work_task, disconnect_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work_task, disconnect_task):
            task.cancel()
        await asyncio.gather(work_task, disconnect_task, return_exceptions=True)
    if work_task.cancelled():
        return None
    return work_task.result()


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _error(code: ErrorCode, message: str) -> JSONResponse:
    error = RequestError(code, message)
    return JSONResponse(error.to_response().model_dump(), status_code=error.status_code)


async def _request_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestError)
    return _error(error.code, error.message)


async def _validation_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return _error(*describe_validation_errors(error.errors()))


def describe_validation_errors(errors: Any) -> tuple[ErrorCode, str]:
    """One readable line per problem, and the FastChat code for the kind of problem."""
    lines = []
    for error in errors:
        if error["type"] == "json_invalid":
            lines.append(f"the request body is not valid JSON: {error.get('ctx', {}).get('error', error['msg'])}")
            continue
        location = ".".join(str(part) for part in error["loc"] if part not in BODY_LOCATIONS)
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{location}: {message}" if location else message)
    out_of_range = any(error["type"] in RANGE_ERRORS for error in errors)
    code = ErrorCode.PARAM_OUT_OF_RANGE if out_of_range else ErrorCode.VALIDATION_TYPE_ERROR
    return code, "invalid request: " + "; ".join(lines)


def create_worker_app(open_service: OpenService, background: Background | None = None) -> FastAPI:
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
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    return app
