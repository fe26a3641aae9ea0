"""Structured logs: one JSON object per line (text on a terminal), no lines for polls, and the X-Request-Id
that ties a request's lines together."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from asgi_correlation_id import correlation_id
from starlette.types import ASGIApp, Receive, Scope, Send

from llm_ops.logs import configure_logging, default_log_format
from llm_ops.serving import DrainingServer
from tests.unit.fake_vllm import FakeVllm, asgi_client, chat, fake_worker, fake_worker_to_serve, openai_chat
from tests.unit.routed import serving_router

pytestmark = pytest.mark.anyio


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The servers' logging as `llm-ops` sets it up, into a buffer (conftest restores pytest's own handlers)."""
    buffer = io.StringIO()
    configure_logging("json", stream=buffer)
    yield buffer


def logged(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


async def test_a_server_answers_with_the_request_id_it_was_given(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/worker_generate", json=chat(), headers={"X-Request-Id": "trace-42"})
    assert response.headers["X-Request-Id"] == "trace-42"


async def test_a_request_without_an_id_gets_a_new_one_in_the_answer(client: httpx.AsyncClient) -> None:
    first = (await client.post("/api/worker_generate", json=chat())).headers["X-Request-Id"]
    second = (await client.post("/api/worker_get_status")).headers["X-Request-Id"]
    assert len(first) == 32 and int(first, 16) >= 0 and first != second


@pytest.mark.parametrize("unusable", ["has spaces", "x" * 129, "é"], ids=["spaces", "too long", "not ASCII"])
async def test_an_unusable_request_id_is_replaced(client: httpx.AsyncClient, unusable: str) -> None:
    headers = {"X-Request-Id": unusable.encode()}
    answered = (await client.post("/api/worker_get_status", headers=headers)).headers["X-Request-Id"]
    assert answered != unusable and len(answered) == 32


async def test_what_vllm_logs_while_serving_a_request_is_one_json_line_with_the_requests_id(
    json_logs: io.StringIO,
) -> None:
    class LoggingVllm(FakeVllm):
        async def create_chat_completion(self, request: Any, raw: Any) -> Any:
            logging.getLogger("vllm.entrypoints.openai").info("Received request %s", request.model)
            return await super().create_chat_completion(request, raw)

    app = await fake_worker(LoggingVllm())
    async with asgi_client(app) as client:
        await client.post("/api/worker_generate_stream", json=chat(), headers={"X-Request-Id": "trace-7"})
    lines = [line for line in logged(json_logs) if line.get("request_id") == "trace-7"]
    line = next(line for line in lines if line["logger"] == "vllm.entrypoints.openai")
    assert line["logger"] == "vllm.entrypoints.openai" and line["level"] == "INFO" and line["time"]
    assert line["message"] == "Received request fake-model"


async def test_lines_logged_outside_a_request_carry_no_request_id(json_logs: io.StringIO) -> None:
    logging.getLogger("llm_ops.test").warning("between requests")
    (line,) = logged(json_logs)
    assert line["message"] == "between requests" and "request_id" not in line


def test_a_stop_signal_that_lands_during_a_request_is_not_logged_under_that_requests_id(
    json_logs: io.StringIO,
) -> None:
    drained_in: list[str | None] = []
    never_served = uvicorn.Config(app=lambda scope, receive, send: None)
    server = DrainingServer(never_served, 1.0, on_drain=lambda: drained_in.append(correlation_id.get()))
    server.started, server._loop = True, asyncio.new_event_loop()
    serving = correlation_id.set("trace-3")  # the main thread was handling this request when the signal came
    try:
        server.handle_exit(signal.SIGTERM, None)
    finally:
        correlation_id.reset(serving)
        server._loop.close()
    (line,) = logged(json_logs)
    assert line["message"] == "SIGTERM: draining for 1 s, then stopping" and "request_id" not in line
    assert drained_in == [None]


class RequestIds:
    """ASGI middleware: notes the path and X-Request-Id of every request the app gets."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.ids: list[tuple[str, str | None]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request_id = dict(scope["headers"]).get(b"x-request-id")
            self.ids.append((scope["path"], request_id.decode() if request_id else None))
        await self.app(scope, receive, send)


async def test_the_router_passes_its_request_id_on_to_the_worker() -> None:
    worker = RequestIds(fake_worker_to_serve())
    async with serving_router(in_process=True) as router:
        router.add("worker-a", worker)
        await router.admitted("worker-a")
        answer = await router.client.post("/v1/chat/completions", json=openai_chat(), headers={"X-Request-Id": "t-9"})
    assert answer.status_code == 200 and answer.headers["X-Request-Id"] == "t-9"
    assert ("/v1/chat/completions", "t-9") in worker.ids


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_logs_are_text_on_a_terminal_and_json_anywhere_else() -> None:
    assert default_log_format(Terminal()) == "text"
    assert default_log_format(io.StringIO()) == "json"


def test_polls_leave_no_access_line_and_other_requests_do(json_logs: io.StringIO) -> None:
    # The handler `llm-ops` set up, which uvicorn's access logger propagates to (serving.serve).
    handler = next(h for h in logging.getLogger().handlers if getattr(h, "stream", None) is json_logs)
    for method, path in (
        ("GET", "/health"),
        ("GET", "/metrics"),
        ("POST", "/receive_heart_beat"),
        ("GET", "/list_workers"),
        ("POST", "/list_models"),
    ):
        args = ("127.0.0.1:5000", method, path, "1.1", 200)
        handler.handle(logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d', args, None))
    assert [line["message"] for line in logged(json_logs)] == ['127.0.0.1:5000 - "POST /list_models HTTP/1.1" 200']
