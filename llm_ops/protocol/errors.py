"""Errors, in the two shapes clients of LLM Ops read.

FastChat's routes (`/api/...`) answer `{"text", "error_code"}` (values from
`fastchat.constants.ErrorCode`); FastChat answers most of them with HTTP 400, we answer with the
status that means the same thing in HTTP (`HTTP_STATUS`). The OpenAI routes answer as vLLM's
server does, `{"error": {"message", "type", "param", "code"}}` with the HTTP status as `code`: the
router in front of the workers refuses in the same shape as the workers behind it.
"""

from __future__ import annotations

from typing import Literal

from fastchat.constants import ErrorCode
from pydantic import BaseModel

__all__ = [
    "AnthropicError",
    "AnthropicErrorEvent",
    "ErrorCode",
    "ErrorResponse",
    "OpenAIError",
    "OpenAIErrorResponse",
    "Overloaded",
    "RequestError",
    "HTTP_STATUS",
    "http_status",
]

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.VALIDATION_TYPE_ERROR: 400,
    ErrorCode.INVALID_AUTH_KEY: 401,
    ErrorCode.INCORRECT_AUTH_KEY: 401,
    ErrorCode.NO_PERMISSION: 403,
    ErrorCode.INVALID_MODEL: 404,
    ErrorCode.PARAM_OUT_OF_RANGE: 400,
    ErrorCode.CONTEXT_OVERFLOW: 400,
    ErrorCode.RATE_LIMIT: 429,
    ErrorCode.QUOTA_EXCEEDED: 429,
    ErrorCode.ENGINE_OVERLOADED: 429,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.CONTROLLER_NO_WORKER: 503,
    ErrorCode.CONTROLLER_WORKER_TIMEOUT: 504,
}


def http_status(code: ErrorCode) -> int:
    return HTTP_STATUS.get(code, 500)


class ErrorResponse(BaseModel):
    """What a client gets for a request LLM Ops refuses or cannot finish."""

    text: str
    error_code: int


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class OpenAIErrorResponse(BaseModel):
    """vLLM's `ErrorResponse` as it goes over the wire."""

    error: OpenAIError


class AnthropicError(BaseModel):
    type: str  # Anthropic's: "api_error" for a failure of the server, ...
    message: str


class AnthropicErrorEvent(BaseModel):
    """An error in a stream of Anthropic's Messages API (`event: error`), as vLLM's server sends one."""

    type: Literal["error"] = "error"
    error: AnthropicError


class RequestError(Exception):
    """A request that cannot be served as asked; `status` overrides the one its code stands for."""

    def __init__(self, code: ErrorCode, message: str, status: int | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status_code = status or http_status(code)
        self.param = param

    def to_response(self) -> ErrorResponse:
        return ErrorResponse(text=self.message, error_code=int(self.code))

    def to_openai(self) -> OpenAIErrorResponse:
        kind = "BadRequestError" if self.status_code < 500 else "InternalServerError"
        return OpenAIErrorResponse(
            error=OpenAIError(message=self.message, type=kind, param=self.param, code=self.status_code)
        )


class Overloaded(RequestError):
    """Refused for lack of room (a worker's admission, or the router when every replica is full);
    `retry_after` (seconds) becomes the Retry-After header."""

    def __init__(self, message: str, retry_after: int, status: int = 429) -> None:
        super().__init__(ErrorCode.ENGINE_OVERLOADED, message, status)
        self.retry_after = retry_after
