"""Structured logs, and the request id that ties a request's lines together across processes.

Every server logs one JSON object per line (python-json-logger): time, level, logger, message,
and `request_id` while it handles a request; aligned, coloured text instead when it writes to a
terminal (`default_log_format`), or when asked (`--log-format text`, `LLM_OPS_LOG_FORMAT=text`,
which `llm-ops up` sets for its processes when it runs on a terminal, with `LLM_OPS_LOG_COLOR=1`).
Polls (health checks, heartbeats, metrics scrapes) are not logged: a line every two seconds per
poller says nothing.

The id comes from the `X-Request-Id` header, which Traefik's `llm-ops-request-id` middleware sets
on every request that arrives without one, so one id shows in Traefik's access log, the OpenAI
API's lines and the worker's lines; servers answer with it and pass it on to the workers they call.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Literal, TextIO

import httpx
from asgi_correlation_id import CorrelationIdMiddleware, correlation_id
from pythonjsonlogger.json import JsonFormatter
from starlette.types import ASGIApp
from uvicorn.logging import DefaultFormatter

LogFormat = Literal["json", "text"]
REQUEST_ID_HEADER = "X-Request-Id"
TEXT_FORMAT = "%(asctime)s %(levelprefix)s %(name)s: %(message)s"  # uvicorn's level prefix: aligned, coloured
# What pollers ask for: the front door's health checks, workers' heartbeats, metrics scrapes.
POLLED_PATHS = frozenset({"/health", "/metrics", "/receive_heart_beat", "/list_workers"})  # /list_workers: the router
# What we accept from a client as an id: printable, no spaces, short enough for a log line.
USABLE_REQUEST_ID = re.compile(r"[!-~]{1,128}")


def default_log_format(stream: TextIO | None = None) -> LogFormat:
    """text on a terminal, JSON otherwise (a file, a pipe, a log collector)."""
    stream = stream or sys.stderr
    return "text" if stream.isatty() else "json"


def not_a_poll(record: logging.LogRecord) -> bool:
    """False for uvicorn's access line of a poll (its arguments: client, method, path, version, status)."""
    args = record.args
    return not (
        record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) > 2 and args[2] in POLLED_PATHS
    )


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to records logged while a request is being handled, and only to those
    (asgi-correlation-id's own filter gives every other line a `null` one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = correlation_id.get()
        if request_id is not None:
            record.request_id = request_id
        return True


def configure_logging(log_format: LogFormat, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """The root logger's only handler, on `stream` (stderr); uvicorn's loggers propagate to it (see
    `serving.serve`)."""
    handler = logging.StreamHandler(stream)
    if log_format == "json":
        fields = {"asctime": "time", "levelname": "level", "name": "logger"}
        handler.setFormatter(JsonFormatter("{asctime}{levelname}{name}{message}", style="{", rename_fields=fields))
    else:  # coloured on a terminal, or under `llm-ops up` on one (LLM_OPS_LOG_COLOR=1)
        colours = handler.stream.isatty() or os.environ.get("LLM_OPS_LOG_COLOR") == "1"
        handler.setFormatter(DefaultFormatter(TEXT_FORMAT, use_colors=colours))
    handler.addFilter(RequestIdFilter())
    handler.addFilter(not_a_poll)
    logging.basicConfig(level=level, handlers=[handler], force=True)


def request_id_headers() -> dict[str, str]:
    """What a call made while handling a request sends to carry its id to the next server."""
    request_id = correlation_id.get()
    return {REQUEST_ID_HEADER: request_id} if request_id is not None else {}


async def pass_request_id_on(request: httpx.Request) -> None:
    """httpx request hook: `request_id_headers` on every call."""
    request.headers.update(request_id_headers())


def usable_request_id(value: str) -> bool:
    return USABLE_REQUEST_ID.fullmatch(value) is not None


class RequestId(CorrelationIdMiddleware):
    """ASGI middleware (asgi-correlation-id's): takes the request's `X-Request-Id` if it is usable, or makes
    one (32 hex digits), logs under it and answers with it; the app sees it in the request's headers."""

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app, header_name=REQUEST_ID_HEADER, validator=usable_request_id)
