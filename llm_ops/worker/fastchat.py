"""FastChat's worker protocol, served by vLLM's own OpenAI handlers.

A FastChat request becomes vLLM's chat or completion request (`openai_body`: the one place the
sampling fields are mapped), goes to `create_chat_completion` or `create_completion` of the
serving handlers vLLM's server already has, and vLLM's answer (SSE events, or a whole response)
becomes FastChat's: chunks of JSON + "\\0" with the text so far (or only the new text, with
`stream_text: delta`). vLLM renders chats with the worker's chat template, the same one its /v1
uses, so both APIs build one prompt. Closing a stream early (the client left) closes vLLM's,
which aborts the engine request; a whole answer is cancelled the same way (`with_cancellation`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

from fastapi import APIRouter, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, TypeAdapter, ValidationError

from llm_ops.access import refusal
from llm_ops.prompts.chat_template import render_chat
from llm_ops.protocol.errors import ErrorCode, RequestError
from llm_ops.protocol.framing import encode_chunk
from llm_ops.protocol.validation import describe_validation_errors
from llm_ops.protocol.worker import (
    FASTCHAT_FORMAT,
    LLM_OPS_FORMAT,
    MAX_STOP_STRINGS,
    ConvTemplateResponse,
    CountTokenRequest,
    CountTokenResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    FinishReason,
    GenerateChunk,
    GenerateRequest,
    ModelDetails,
    Usage,
    WorkerGenerateBody,
    WorkerStatus,
    as_generate_request,
)
from llm_ops.worker import vllm_api
from llm_ops.worker.state import WorkerState, worker_state

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api")
GENERATE_BODY: TypeAdapter[Any] = TypeAdapter(WorkerGenerateBody)
NOT_FIELDS = frozenset({LLM_OPS_FORMAT, FASTCHAT_FORMAT})  # union tags in error locations
FINISH_REASONS: dict[str | None, FinishReason | None] = {None: None, "length": "length", "abort": "abort"}


def openai_body(request: GenerateRequest, state: WorkerState, stream: bool) -> dict[str, Any]:
    """vLLM's chat or completion request for a FastChat request."""
    chat = request.generation_mode == "chat"
    stop = list(dict.fromkeys(request.stop_strings() + (state.stop if chat else [])))
    if len(stop) > MAX_STOP_STRINGS:
        raise RequestError(
            ErrorCode.PARAM_OUT_OF_RANGE,
            f"stop: this model's conversation template adds {state.stop}; with them a request may have at most "
            f"{MAX_STOP_STRINGS} stop strings",
        )
    body: dict[str, Any] = {
        "model": request.model_identifier,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k,
        "max_completion_tokens" if chat else "max_tokens": request.max_new_tokens,
        "stop": stop,
        "stop_token_ids": (request.stop_token_ids or []) + (state.stop_token_ids if chat else []),
        "repetition_penalty": request.repetition_penalty,
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
        "seed": request.seed,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    if chat:
        body["messages"] = request.chat_messages()
    else:
        body |= {"prompt": request.prompt, "echo": request.echo}
    return body


async def serve_openai(request: GenerateRequest, raw: Request, stream: bool) -> Any:
    """vLLM's answer: an async generator of SSE events, or a whole response; refusals raise `RequestError`."""
    body = openai_body(request, worker_state(raw), stream)
    chat = request.generation_mode == "chat"
    handler = vllm_api.generation_handler(raw.app, chat)
    if handler is None:
        message = (
            f"{request.model_identifier} is an embedding model: it does not generate text; "
            "ask it worker_get_embeddings (or /v1/embeddings)"
        )
        raise RequestError(ErrorCode.VALIDATION_TYPE_ERROR, message, 400)
    try:
        answer = await vllm_api.openai_answer(handler, body, raw, chat)
    except ValidationError as error:  # a value vLLM refuses that FastChat's bounds let through
        raise RequestError(ErrorCode.PARAM_OUT_OF_RANGE, describe_validation_errors(error.errors()).message()) from None
    refused = vllm_api.error_of(answer)
    if refused is not None:
        raise fastchat_error(*refused)
    return answer


def fastchat_error(status: int, message: str) -> RequestError:
    """vLLM's refusal, with the FastChat error code that means the same."""
    if vllm_api.is_context_overflow(message):
        code = ErrorCode.CONTEXT_OVERFLOW
    elif status == 404:
        code = ErrorCode.INVALID_MODEL
    elif status in (429, 503):
        code = ErrorCode.ENGINE_OVERLOADED
    elif status < 500:
        code = ErrorCode.PARAM_OUT_OF_RANGE
    else:
        code = ErrorCode.INTERNAL_ERROR
    return RequestError(code, message, status)


async def fastchat_chunks(events: AsyncGenerator[str, None], head: str, deltas: bool) -> AsyncIterator[GenerateChunk]:
    """vLLM's SSE events as FastChat chunks; `head` (an echoed chat prompt) comes before the first text."""
    text, usage, outcome = head, Usage.of(0, 0), "aborted"  # unless it ends otherwise
    try:
        async with contextlib.aclosing(events):  # closing vLLM's stream now, not at GC, aborts now
            async for event in events:
                for data in _event_data(event):
                    if "error" in data:
                        outcome = "error"
                        message = f"the engine failed while generating: {data['error'].get('message')}"
                        yield GenerateChunk(
                            text=message, error_code=ErrorCode.INTERNAL_ERROR, usage=usage, finish_reason="error"
                        )
                        return
                    if data.get("usage"):
                        usage = Usage.of(data["usage"]["prompt_tokens"], data["usage"]["completion_tokens"] or 0)
                    for choice in data["choices"]:
                        new = choice["text"] if "text" in choice else choice["delta"].get("content") or ""
                        if not new and not choice.get("finish_reason"):
                            continue
                        text += new  # after the first chunk of a delta stream, text is "" here
                        reason = FINISH_REASONS.get(choice.get("finish_reason"), "stop")
                        outcome = "finished" if reason else outcome
                        yield GenerateChunk(text=text, usage=usage, finish_reason=reason)
                        text = "" if deltas else text
    finally:
        log_outcome(outcome, usage)


def log_outcome(outcome: str, usage: Usage) -> None:
    """One line per FastChat request, under the request's id (llm_ops.logs)."""
    logger.info(
        "%s request: %d prompt tokens, %d generated",
        outcome,
        usage.prompt_tokens,
        usage.completion_tokens,
        extra={"outcome": outcome, "generated": usage.completion_tokens},
    )


def _event_data(event: str) -> list[dict[str, Any]]:
    lines = (line.removeprefix("data: ") for line in event.splitlines() if line.startswith("data: "))
    return [json.loads(line) for line in lines if line != "[DONE]"]


def whole_chunk(answer: BaseModel, head: str) -> GenerateChunk:
    """A whole vLLM answer as FastChat's `worker_generate` body."""
    choice = cast(Any, answer).choices[0]
    text = choice.text if hasattr(choice, "text") else (choice.message.content or "")
    usage = cast(Any, answer).usage
    reason = FINISH_REASONS.get(choice.finish_reason, "stop")
    return GenerateChunk(
        text=head + text, usage=Usage.of(usage.prompt_tokens, usage.completion_tokens), finish_reason=reason
    )


async def generate_request(raw: Request) -> GenerateRequest:
    """The request body, checked: the model is served here and every field is within its bounds."""
    try:
        body = as_generate_request(GENERATE_BODY.validate_json(await raw.body()))
    except ValidationError as error:
        invalid = describe_validation_errors(error.errors(), not_fields=NOT_FIELDS)
        code = ErrorCode.PARAM_OUT_OF_RANGE if invalid.out_of_range else ErrorCode.VALIDATION_TYPE_ERROR
        raise RequestError(code, invalid.message()) from None
    names = worker_state(raw).model_names
    if body.model_identifier not in names:
        raise RequestError(
            ErrorCode.INVALID_MODEL,
            f"this worker serves {', '.join(map(repr, names))}, not model_identifier {body.model_identifier!r}",
        )
    return body


async def echoed_prompt(request: GenerateRequest, raw: Request) -> str:
    """What `echo` puts before a chat answer: the prompt vLLM renders for it (completions echo in vLLM)."""
    if not (request.echo and request.generation_mode == "chat"):
        return ""
    state = worker_state(raw)
    return await asyncio.to_thread(render_chat, state.engine.tokenizer(), state.chat_template, request.chat_messages())


@router.post("/worker_generate_stream", response_class=StreamingResponse)
async def worker_generate_stream(raw: Request) -> Response:
    try:
        request = await generate_request(raw)
        head = await echoed_prompt(request, raw)
        events = await serve_openai(request, raw, stream=True)
    except RequestError as error:
        return refusal(raw.scope, error)
    chunks = fastchat_chunks(events, head, deltas=request.stream_text == "delta")
    return StreamingResponse((encode_chunk(chunk) async for chunk in chunks), media_type="text/plain")


@router.post("/worker_generate", response_model=GenerateChunk)
async def worker_generate(raw: Request) -> Response:
    try:
        request = await generate_request(raw)
    except RequestError as error:
        return refusal(raw.scope, error)
    # Cancelled, and the engine request aborted, when the client leaves (then nobody reads the answer).
    answer = await vllm_api.with_cancellation(_whole_answer)(request, raw)
    return answer if answer is not None else Response(status_code=499)


async def _whole_answer(request: GenerateRequest, raw: Request) -> Response:
    """The answer, or the refusal: vLLM's `with_cancellation` leaves an exception of a cancelled call unread."""
    try:
        head = await echoed_prompt(request, raw)
        chunk = whole_chunk(await serve_openai(request, raw, stream=False), head)
    except RequestError as error:
        return refusal(raw.scope, error)
    log_outcome("finished", chunk.usage)
    return JSONResponse(chunk.model_dump())


@router.post("/worker_get_embeddings", response_model=EmbeddingsResponse)
async def worker_get_embeddings(raw: Request) -> Response:
    """FastChat's embeddings, computed by vLLM's /v1/embeddings handler (its pooling and normalisation)."""
    body = await raw.body()  # read before vLLM's `with_cancellation` listens for the client leaving
    answer = await vllm_api.with_cancellation(_embeddings)(body, raw)
    return answer if answer is not None else Response(status_code=499)


async def _embeddings(body: bytes, raw: Request) -> Response:
    try:
        vectors, tokens = await _embed(body, raw)
    except RequestError as error:
        return refusal(raw.scope, error)
    return JSONResponse(EmbeddingsResponse(embedding=vectors, token_num=tokens).model_dump())


async def _embed(body: bytes, raw: Request) -> tuple[list[Any], int]:
    try:
        request = EmbeddingsRequest.model_validate_json(body)
    except ValidationError as error:
        message = describe_validation_errors(error.errors(), not_fields=NOT_FIELDS).message()
        raise RequestError(ErrorCode.VALIDATION_TYPE_ERROR, message) from None
    names = worker_state(raw).model_names
    if request.model is not None and request.model not in names:
        message = f"this worker serves {', '.join(map(repr, names))}, not model {request.model!r}"
        raise RequestError(ErrorCode.INVALID_MODEL, message)
    handler = vllm_api.embedding_handler(raw.app)
    if handler is None:
        message = f"{names[0]} generates text, it does not embed it: ask an embedding model for embeddings"
        raise RequestError(ErrorCode.VALIDATION_TYPE_ERROR, message)
    vllm_body = {"model": names[0], "input": request.input, "encoding_format": request.encoding_format or "float"}
    answer = await vllm_api.embedding_answer(handler, vllm_body, raw)
    refused = vllm_api.error_of(answer)
    if refused is not None:
        raise fastchat_error(*refused)
    vectors = [item["embedding"] for item in sorted(answer["data"], key=lambda item: item["index"])]
    return vectors, answer["usage"]["prompt_tokens"]


@router.post("/worker_get_status")
async def worker_get_status(raw: Request) -> WorkerStatus:
    return worker_state(raw).status()


@router.post("/count_token")
async def count_token(raw: Request) -> Response:
    try:
        body = CountTokenRequest.model_validate_json(await raw.body())
    except ValidationError as error:
        message = describe_validation_errors(error.errors(), not_fields=NOT_FIELDS).message()
        return refusal(raw.scope, RequestError(ErrorCode.VALIDATION_TYPE_ERROR, message))
    count = await vllm_api.count_tokens(raw, body.prompt)
    return JSONResponse(CountTokenResponse(count=count).model_dump())


@router.post("/worker_get_conv_template")
async def worker_get_conv_template(raw: Request) -> ConvTemplateResponse:
    return ConvTemplateResponse(conv=jsonable_encoder(worker_state(raw).conv))


@router.post("/model_details")
async def model_details(raw: Request) -> ModelDetails:
    return ModelDetails(context_length=worker_state(raw).engine.max_model_len())
