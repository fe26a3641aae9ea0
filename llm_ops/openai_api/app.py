"""The OpenAI-compatible HTTP surface: /v1/models, /v1/chat/completions, /v1/completions.

Streams are server-sent events ending with `data: [DONE]`; with `stream_options.include_usage` a
last chunk carries the usage. Errors have OpenAI's shape, `{"error": {"message", "type", "param",
"code"}}`. With `n` > 1 the choices are generated concurrently, one worker request each.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from llm_ops.access import LimitBody, RequireApiKey, authorization_headers
from llm_ops.controller.client import ControllerClient
from llm_ops.logs import RequestId, pass_request_id_on
from llm_ops.openai_api.gateway import OPENAI_CODES, APIError, Gateway, worker_request
from llm_ops.openai_api.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Delta,
    Model,
    ModelList,
    Usage,
)
from llm_ops.protocol.errors import ErrorCode
from llm_ops.protocol.worker import GenerateChunk
from llm_ops.serving import cancel_on_disconnect, describe_validation_errors, http_error_message
from llm_ops.settings import MAX_BODY_BYTES

OpenAIRequest = ChatCompletionRequest | CompletionRequest
WORKER_TIMEOUT = httpx.Timeout(connect=5.0, read=None, write=30.0, pool=None)  # answers can take minutes


def gateway(request: Request) -> Gateway:
    found: Gateway = request.app.state.gateway
    return found


async def list_models(request: Request) -> ModelList:
    try:
        names = await gateway(request).controller.models()
    except httpx.HTTPError as error:
        raise APIError(503, f"the controller cannot be reached: {error!r}") from error
    return ModelList(data=[Model(id=name) for name in names])


async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    return await complete(body, request)


async def completions(body: CompletionRequest, request: Request) -> Response:
    return await complete(body, request)


async def complete(body: OpenAIRequest, request: Request) -> Response:
    """Open one worker stream per choice (refusals become errors here, before any byte is sent)."""
    streams = [gateway(request).chunks(worker_request(body, choice)) for choice in range(body.n)]
    firsts = await first_chunks(streams)
    response_id = f"{'chatcmpl' if isinstance(body, ChatCompletionRequest) else 'cmpl'}-{uuid.uuid4().hex}"
    if body.stream:
        return StreamingResponse(sse(body, response_id, firsts, streams), media_type="text/event-stream")
    try:
        finals = await cancel_on_disconnect(request, asyncio.gather(*map(last, firsts, streams)))
    finally:
        await asyncio.gather(*(stream.aclose() for stream in streams))
    if finals is None:  # the client left; the worker requests were aborted
        return Response(status_code=499)
    failed = next((chunk for chunk in finals if chunk.error_code), None)
    if failed is not None:
        raise APIError(500, failed.text)
    return JSONResponse(whole_response(body, response_id, finals).model_dump())


async def first_chunks(streams: list[AsyncGenerator[GenerateChunk, None]]) -> list[GenerateChunk]:
    """Each stream's first chunk; on a refusal or a cancellation, every stream closed and the error raised.

    Every first read has ended before any stream is closed: closing one still being read is an error.
    """
    try:
        firsts = await asyncio.gather(*(anext(stream) for stream in streams), return_exceptions=True)
    except BaseException:  # cancelled (the client left): gather has cancelled and awaited the reads
        await asyncio.gather(*(stream.aclose() for stream in streams))
        raise
    chunks = [first for first in firsts if isinstance(first, GenerateChunk)]
    if len(chunks) < len(streams):
        await asyncio.gather(*(stream.aclose() for stream in streams))
        raise next(first for first in firsts if isinstance(first, BaseException))
    return chunks


async def last(first: GenerateChunk, stream: AsyncGenerator[GenerateChunk, None]) -> GenerateChunk:
    """The last chunk with the whole text (or the error chunk that ended the stream)."""
    texts = [first.text]
    final = first
    async for chunk in stream:
        final = chunk
        texts.append(chunk.text)
    return final if final.error_code else final.model_copy(update={"text": "".join(texts)})


def whole_response(body: OpenAIRequest, response_id: str, finals: list[GenerateChunk]) -> BaseModel:
    usage = total_usage(finals)
    if isinstance(body, ChatCompletionRequest):
        choices = [
            ChatChoice(index=i, message=AssistantMessage(content=c.text), finish_reason=finish_reason(c))
            for i, c in enumerate(finals)
        ]
        return ChatCompletion(id=response_id, model=body.model, choices=choices, usage=usage)
    texts = [CompletionChoice(index=i, text=c.text, finish_reason=finish_reason(c)) for i, c in enumerate(finals)]
    return Completion(id=response_id, model=body.model, choices=texts, usage=usage)


async def sse(
    body: OpenAIRequest,
    response_id: str,
    firsts: list[GenerateChunk],
    streams: list[AsyncGenerator[GenerateChunk, None]],
) -> AsyncIterator[bytes]:
    """Deltas of every choice as they come; closing this (client gone) closes every worker stream."""
    finals: list[GenerateChunk | None] = [None] * len(streams)
    if isinstance(body, ChatCompletionRequest):
        for index in range(len(streams)):
            yield event(chat_chunk(body, response_id, index, Delta(role="assistant", content="")))
    async with merged(firsts, streams) as chunks:
        async for index, chunk in chunks:
            if chunk.error_code:
                yield event(APIError(500, chunk.text).body)
                yield b"data: [DONE]\n\n"
                return
            delta = chunk.text
            reason = finish_reason(chunk) if chunk.finish_reason else None
            if reason:
                finals[index] = chunk
            if delta or reason:
                yield event(delta_chunk(body, response_id, index, delta, reason))
    if body.stream_options is not None and body.stream_options.include_usage:
        usage = total_usage([chunk for chunk in finals if chunk is not None])
        yield event(usage_chunk(body, response_id, usage))
    yield b"data: [DONE]\n\n"


@contextlib.asynccontextmanager
async def merged(
    firsts: list[GenerateChunk], streams: list[AsyncGenerator[GenerateChunk, None]]
) -> AsyncIterator[AsyncIterator[tuple[int, GenerateChunk]]]:
    """(choice, chunk) pairs from all streams in arrival order; leaving closes them all."""
    queue: asyncio.Queue[tuple[int, GenerateChunk] | None] = asyncio.Queue()

    async def pump(index: int) -> None:
        try:
            await queue.put((index, firsts[index]))
            async for chunk in streams[index]:
                await queue.put((index, chunk))
        finally:
            await queue.put(None)

    async def items() -> AsyncIterator[tuple[int, GenerateChunk]]:
        running = len(streams)
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
            else:
                yield item

    tasks = [asyncio.create_task(pump(index)) for index in range(len(streams))]
    try:
        yield items()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(stream.aclose() for stream in streams))  # aborts what is still generating


def chat_chunk(body: OpenAIRequest, response_id: str, index: int, delta: Delta, reason: Any = None) -> BaseModel:
    return ChatCompletionChunk(
        id=response_id, model=body.model, choices=[ChatChunkChoice(index=index, delta=delta, finish_reason=reason)]
    )


def delta_chunk(body: OpenAIRequest, response_id: str, index: int, text: str, reason: Any) -> BaseModel:
    if isinstance(body, ChatCompletionRequest):
        return chat_chunk(body, response_id, index, Delta(content=text or None), reason)
    choice = CompletionChoice(index=index, text=text, finish_reason=reason)
    return Completion(id=response_id, model=body.model, choices=[choice])


def usage_chunk(body: OpenAIRequest, response_id: str, usage: Usage) -> BaseModel:
    if isinstance(body, ChatCompletionRequest):
        return ChatCompletionChunk(id=response_id, model=body.model, choices=[], usage=usage)
    return Completion(id=response_id, model=body.model, choices=[], usage=usage)


def event(data: BaseModel) -> bytes:
    return b"data: " + data.model_dump_json().encode() + b"\n\n"


def finish_reason(chunk: GenerateChunk) -> Any:
    return "length" if chunk.finish_reason == "length" else "stop"


def total_usage(finals: list[GenerateChunk]) -> Usage:
    prompt = finals[0].usage.prompt_tokens if finals else 0
    completion = sum(chunk.usage.completion_tokens for chunk in finals)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


async def health() -> dict[str, str]:
    return {"status": "ok"}


async def _api_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, APIError)
    return JSONResponse(error.body.model_dump(), status_code=error.status, headers=error.headers)


def _refusal(status: int, code: ErrorCode, message: str) -> JSONResponse:
    error = APIError(status, message, OPENAI_CODES.get(code))
    return JSONResponse(error.body.model_dump(), status_code=status)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    return await _api_error(request, APIError(error.status_code, http_error_message(request, error)))


async def _validation_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    invalid = describe_validation_errors(error.errors(), not_fields=frozenset({"body"}))
    return await _api_error(_, APIError(400, invalid.message(), param=invalid.first_field))


def create_openai_app(
    controller_address: str,
    transport: httpx.AsyncBaseTransport | None = None,
    api_keys: frozenset[str] = frozenset(),
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """`transport`: how to reach the controller and workers (tests pass in-process apps). `api_keys`:
    when given, every /v1/ route needs one, and requests to the workers carry one."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        headers = authorization_headers(api_keys)
        hooks = {"request": [pass_request_id_on]}
        async with httpx.AsyncClient(
            timeout=WORKER_TIMEOUT, transport=transport, headers=headers, event_hooks=hooks
        ) as http:
            app.state.gateway = Gateway(http, ControllerClient(http, controller_address))
            yield

    app = FastAPI(title="LLM Ops OpenAI-compatible API", lifespan=lifespan)
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"], response_model=None)
    app.add_api_route("/v1/completions", completions, methods=["POST"], response_model=None)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_middleware(LimitBody, max_bytes=max_body_bytes, refuse=_refusal)
    app.add_middleware(RequireApiKey, keys=api_keys, protected_prefixes=("/v1/",), refuse=_refusal)
    app.add_middleware(RequestId)
    return app
