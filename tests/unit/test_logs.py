"""Structured logs: one JSON object per line, and the X-Request-Id that ties a request's lines together."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from llm_ops.controller.app import create_controller_app
from llm_ops.controller.registry import WorkerRegistry
from llm_ops.logs import configure_logging
from llm_ops.openai_api.app import create_openai_app
from llm_ops.protocol.worker import WorkerStatus
from llm_ops.worker.app import create_worker_app
from tests.unit.fake_engine import FakeEngine, open_fake_service
from tests.unit.test_openai_api import Hosts
from tests.unit.test_worker_app import chat

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def worker() -> AsyncIterator[httpx.AsyncClient]:
    app = create_worker_app(lambda: open_fake_service(FakeEngine()))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://w") as client:
        yield client


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The servers' logging as `llm-ops` sets it up, into a buffer; pytest's own handlers restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    buffer = io.StringIO()
    configure_logging("json", stream=buffer)
    yield buffer
    root.handlers[:], root.level = handlers, level


def logged(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


async def test_a_server_answers_with_the_request_id_it_was_given(worker: httpx.AsyncClient) -> None:
    response = await worker.post("/api/worker_generate", json=chat(), headers={"X-Request-Id": "trace-42"})
    assert response.headers["X-Request-Id"] == "trace-42"


async def test_a_request_without_an_id_gets_a_new_one_in_the_answer(worker: httpx.AsyncClient) -> None:
    first = (await worker.post("/api/worker_generate", json=chat())).headers["X-Request-Id"]
    second = (await worker.post("/api/worker_get_status")).headers["X-Request-Id"]
    assert len(first) == 32 and int(first, 16) >= 0 and first != second


@pytest.mark.parametrize("unusable", ["has spaces", "x" * 129, "é"], ids=["spaces", "too long", "not ASCII"])
async def test_an_unusable_request_id_is_replaced(worker: httpx.AsyncClient, unusable: str) -> None:
    headers = {"X-Request-Id": unusable.encode()}
    answered = (await worker.post("/api/worker_get_status", headers=headers)).headers["X-Request-Id"]
    assert answered != unusable and len(answered) == 32


async def test_each_request_is_logged_as_one_json_line_with_its_id_outcome_and_tokens(
    worker: httpx.AsyncClient, json_logs: io.StringIO
) -> None:
    await worker.post("/api/worker_generate_stream", json=chat(), headers={"X-Request-Id": "trace-7"})
    lines = [line for line in logged(json_logs) if line.get("request_id") == "trace-7"]
    finished = next(line for line in lines if line.get("outcome") == "finished")
    assert finished["logger"] == "llm_ops.worker.service" and finished["level"] == "INFO" and finished["time"]
    assert finished["generated"] == 5 and finished["message"] == "finished chat request: 14 prompt tokens, 5 generated"
    assert len(finished["engine_request_id"]) == 32


async def test_lines_logged_outside_a_request_carry_no_request_id(json_logs: io.StringIO) -> None:
    logging.getLogger("llm_ops.test").warning("between requests")
    (line,) = logged(json_logs)
    assert line["message"] == "between requests" and "request_id" not in line


class Recording(Hosts):
    """`Hosts`, noting the X-Request-Id of every request the OpenAI API sends."""

    def __init__(self, apps: dict[str, Any]) -> None:
        super().__init__(apps)
        self.sent: list[tuple[str, str | None]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.url.path, request.headers.get("X-Request-Id")))
        return await super().handle_async_request(request)


async def test_the_openai_api_passes_its_request_id_on_to_the_controller_and_the_worker() -> None:
    registry = WorkerRegistry()
    registry.register("http://worker-a/api", WorkerStatus(model_names=["fake-model"], queue_length=0))
    worker = create_worker_app(lambda: open_fake_service(FakeEngine()))
    controller = create_controller_app(registry, transport=Hosts({"worker-a": worker}))
    outgoing = Recording({"worker-a": worker, "controller": controller})
    api = create_openai_app("http://controller", transport=outgoing)
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]}
    async with (
        worker.router.lifespan_context(worker),
        controller.router.lifespan_context(controller),
        api.router.lifespan_context(api),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api") as client,
    ):
        response = await client.post("/v1/chat/completions", json=body, headers={"X-Request-Id": "trace-9"})
    assert response.status_code == 200 and response.headers["X-Request-Id"] == "trace-9"
    assert outgoing.sent == [("/get_worker_address", "trace-9"), ("/api/worker_generate_stream", "trace-9")]
