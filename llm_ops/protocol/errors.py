"""The one error shape of LLM Ops: FastChat's `{"text", "error_code"}` body with an HTTP status.

FastChat clients read `error_code` (values from `fastchat.constants.ErrorCode`) and `text`.
FastChat answers most of them with HTTP 400; we answer with the status that means the same thing
in HTTP, listed in `HTTP_STATUS`.
"""

from __future__ import annotations

from fastchat.constants import ErrorCode
from pydantic import BaseModel

__all__ = ["ErrorCode", "ErrorResponse", "RequestError", "HTTP_STATUS", "http_status"]

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


class RequestError(Exception):
    """A request that cannot be served as asked; becomes an `ErrorResponse`."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status_code(self) -> int:
        return http_status(self.code)

    def to_response(self) -> ErrorResponse:
        return ErrorResponse(text=self.message, error_code=int(self.code))
