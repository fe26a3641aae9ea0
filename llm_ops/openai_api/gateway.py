"""From an OpenAI request to the workers and back: pick a worker through the controller, read its stream.

Chat requests go to the worker as `generation_mode: chat`, so the worker renders them with its
conversation template (or chat template), exactly as `/api/<model>/worker_generate` does.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import httpx
from pydantic import ValidationError

from llm_ops.controller.client import ControllerClient
from llm_ops.openai_api.protocol import ChatCompletionRequest, CompletionRequest, ErrorDetail, ErrorResponse
from llm_ops.protocol.errors import ErrorCode
from llm_ops.protocol.errors import ErrorResponse as WorkerErrorResponse
from llm_ops.protocol.framing import iter_chunks
from llm_ops.protocol.worker import ChatMessage, GenerateChunk, GenerateRequest, Role, Usage

logger = logging.getLogger(__name__)

ROLES: dict[str, Role] = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# FastChat error codes -> OpenAI's error code names.
OPENAI_CODES = {
    ErrorCode.INVALID_MODEL: "model_not_found",
    ErrorCode.CONTEXT_OVERFLOW: "context_length_exceeded",
    ErrorCode.ENGINE_OVERLOADED: "rate_limit_exceeded",
    ErrorCode.INVALID_AUTH_KEY: "invalid_api_key",
}


class APIError(Exception):
    """An OpenAI-shaped error with its HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}  # e.g. a worker's Retry-After
        kind = "invalid_request_error" if status < 500 else "server_error"
        self.body = ErrorResponse(error=ErrorDetail(message=message, type=kind, param=param, code=code))


def worker_request(request: ChatCompletionRequest | CompletionRequest, choice: int) -> GenerateRequest:
    """The worker request for choice number `choice` (seeds differ per choice, or n choices would be equal)."""
    fields: dict[str, object] = {
        "model_identifier": request.model,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
    }
    if request.stop is not None:
        fields["stop"] = request.stop
    if request.seed is not None:
        fields["seed"] = request.seed + choice
    if isinstance(request, ChatCompletionRequest):
        fields["generation_mode"] = "chat"
        fields["messages"] = [ChatMessage(role=ROLES[m.role], text=m.text()) for m in request.messages]
        max_new_tokens = request.max_new_tokens()
    else:
        fields |= {"generation_mode": "completion", "prompt": request.prompt, "echo": request.echo}
        max_new_tokens = request.max_tokens
    if max_new_tokens is not None:  # unset: the worker fills the room left in the context
        fields["max_new_tokens"] = max_new_tokens
    try:
        return GenerateRequest.model_validate(fields)
    except ValidationError as error:  # e.g. a conversation no template can render
        raise APIError(400, "; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors())) from error


@dataclass
class Gateway:
    http: httpx.AsyncClient
    controller: ControllerClient
    attempts: int = 3  # workers tried when one cannot be reached (it died, the controller does not know yet)

    async def chunks(self, request: GenerateRequest) -> AsyncGenerator[GenerateChunk, None]:
        """The worker's chunks, each with the new text (`stream_text: delta`). Refusals raise `APIError`
        on the first iteration; a worker that dies mid-stream ends it with an error chunk. Closing the
        generator closes the worker stream, which aborts the generation."""
        response = await self._open(request)
        usage = Usage.of(0, 0)
        try:
            async for raw in iter_chunks(response.aiter_raw()):
                chunk = GenerateChunk.model_validate_json(raw)
                usage = chunk.usage
                yield chunk
        except httpx.HTTPError as error:
            logger.warning("worker stream for %s broke: %r", request.model_identifier, error)
            message = f"the worker serving {request.model_identifier} stopped answering: {error!r}"
            yield GenerateChunk(text=message, error_code=ErrorCode.INTERNAL_ERROR, usage=usage, finish_reason="error")
        finally:
            await response.aclose()

    async def _open(self, request: GenerateRequest) -> httpx.Response:
        body = request.model_dump(mode="json", exclude_unset=True) | {"stream_text": "delta"}
        for _ in range(self.attempts):
            address = await self._worker_address(request.model_identifier)
            try:
                sent = self.http.build_request("POST", f"{address}/worker_generate_stream", json=body)
                response = await self.http.send(sent, stream=True)
            except httpx.TransportError as error:
                # Dead, and the controller has not expired it yet: have it check its workers now.
                logger.warning("worker %s unreachable: %r", address, error)
                await self._refresh_workers()
                continue
            if response.status_code == 200:
                return response
            await response.aread()
            await response.aclose()
            raise worker_error(response)
        raise APIError(503, f"no worker serving {request.model_identifier} could be reached; try again")

    async def _refresh_workers(self) -> None:
        try:
            await self.controller.refresh_all_workers()
        except httpx.HTTPError as error:
            logger.warning("the controller could not refresh its workers: %r", error)

    async def _worker_address(self, model: str) -> str:
        try:
            address = await self.controller.worker_address(model)
        except httpx.HTTPError as error:
            raise APIError(503, f"the controller cannot be reached: {error!r}") from error
        if address is None:
            raise APIError(404, f"The model `{model}` does not exist or has no worker", "model_not_found", "model")
        return address


def worker_error(response: httpx.Response) -> APIError:
    try:
        error = WorkerErrorResponse.model_validate_json(response.content)
        code = ErrorCode(error.error_code)
    except ValueError:  # not our error body (pydantic's ValidationError is a ValueError too)
        return APIError(502, f"the worker answered {response.status_code}: {response.text[:200]}")
    retry_after = {"Retry-After": response.headers["Retry-After"]} if "Retry-After" in response.headers else None
    return APIError(response.status_code, error.text, OPENAI_CODES.get(code), headers=retry_after)
