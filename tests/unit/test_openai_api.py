"""The OpenAI-compatible API over in-process controller and workers (a scripted engine)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from llm_ops.controller.app import create_controller_app
from llm_ops.controller.registry import WorkerRegistry
from llm_ops.openai_api.app import create_openai_app
from llm_ops.protocol.worker import WorkerStatus
from llm_ops.worker.app import create_worker_app
from tests.unit.fake_engine import FakeEngine, open_fake_service

pytestmark = pytest.mark.anyio
WORKER = "http://worker-a/api"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Hosts(httpx.AsyncBaseTransport):
    """Routes requests to in-process apps by host name; unknown hosts refuse connections, like dead workers."""

    def __init__(self, apps: dict[str, Any]) -> None:
        self.transports = {host: httpx.ASGITransport(app=app) for host, app in apps.items()}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport = self.transports.get(request.url.host)
        if transport is None:
            raise httpx.ConnectError(f"connection refused: {request.url.host}", request=request)
        return await transport.handle_async_request(request)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def registry() -> WorkerRegistry:
    registry = WorkerRegistry()
    registry.register(WORKER, WorkerStatus(model_names=["fake-model"], queue_length=0))
    return registry


@pytest.fixture
async def client(engine: FakeEngine, registry: WorkerRegistry) -> AsyncIterator[httpx.AsyncClient]:
    worker = create_worker_app(lambda: open_fake_service(engine))
    controller = create_controller_app(registry, transport=Hosts({"worker-a": worker}))
    api = create_openai_app("http://controller", transport=Hosts({"worker-a": worker, "controller": controller}))
    transport = httpx.ASGITransport(app=api)
    async with (
        worker.router.lifespan_context(worker),
        controller.router.lifespan_context(controller),
        api.router.lifespan_context(api),
        httpx.AsyncClient(transport=transport, base_url="http://api") as client,
    ):
        yield client


def chat(**fields: Any) -> dict[str, Any]:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    return body | fields


def events(response: httpx.Response) -> list[Any]:
    """The JSON of each server-sent event, and "[DONE]" for the end marker."""
    lines = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


async def test_models_are_the_controllers(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/models")
    assert response.json() == {
        "object": "list",
        "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "llm-ops"}],
    }


async def test_a_chat_completion_answers_with_the_message_and_usage(client: httpx.AsyncClient) -> None:
    answer = (await client.post("/v1/chat/completions", json=chat(temperature=0))).json()
    assert answer["object"] == "chat.completion" and answer["id"].startswith("chatcmpl-")
    assert answer["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "The capital is Paris."},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    assert answer["usage"] == {"prompt_tokens": 14, "completion_tokens": 5, "total_tokens": 19}


async def test_a_streamed_chat_sends_the_role_then_deltas_then_usage_then_done(client: httpx.AsyncClient) -> None:
    body = chat(stream=True, stream_options={"include_usage": True})
    response = await client.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    sent = events(response)
    assert sent[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [e["choices"][0]["delta"]["content"] for e in sent[1:-2] if e["choices"][0]["delta"]["content"]]
    assert "".join(deltas) == "The capital is Paris."
    assert sent[-3]["choices"][0]["finish_reason"] == "stop"
    assert sent[-2]["choices"] == [] and sent[-2]["usage"]["completion_tokens"] == 5
    assert sent[-1] == "[DONE]"


async def test_a_completion_continues_the_prompt_and_can_echo_it(client: httpx.AsyncClient) -> None:
    body = {"model": "fake-model", "prompt": "Once upon", "max_tokens": 8, "echo": True}
    answer = (await client.post("/v1/completions", json=body)).json()
    assert answer["object"] == "text_completion"
    assert answer["choices"][0]["text"] == "Once upon" + "The capital is Paris."


async def test_a_streamed_completion_ends_with_done(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/completions", json={"model": "fake-model", "prompt": "x", "stream": True})
    sent = events(response)
    assert "".join(e["choices"][0]["text"] for e in sent[:-1]) == "The capital is Paris."
    assert sent[-1] == "[DONE]"


async def test_n_choices_are_separate_generations_with_distinct_seeds(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    answer = (await client.post("/v1/chat/completions", json=chat(n=3, seed=5, max_tokens=10))).json()
    assert [choice["index"] for choice in answer["choices"]] == [0, 1, 2]
    assert sorted(options.seed for options in engine.seen_options) == [5, 6, 7]
    assert {options.max_tokens for options in engine.seen_options} == {10}
    assert answer["usage"]["completion_tokens"] == 15


async def test_sampling_fields_reach_the_engine(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    body = chat(temperature=0.5, top_p=0.9, stop=["\n"], presence_penalty=0.1, frequency_penalty=0.2)
    await client.post("/v1/chat/completions", json=body)
    options = engine.seen_options[-1]
    assert (options.temperature, options.top_p, options.presence_penalty, options.frequency_penalty) == (
        0.5,
        0.9,
        0.1,
        0.2,
    )
    assert "\n" in options.stop


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "says"),
    [
        ("/v1/chat/completions", chat(model="gpt-4"), 404, "model_not_found", "gpt-4"),
        ("/v1/chat/completions", chat(temperature=3), 400, None, "temperature"),
        ("/v1/chat/completions", chat(tools=[]), 400, None, "tools: Extra inputs are not permitted"),
        ("/v1/chat/completions", chat(messages=[]), 400, None, "messages"),
        ("/v1/chat/completions", chat(messages=[{"role": "assistant", "content": "hi"}]), 400, None, "user"),
        ("/v1/chat/completions", chat(max_tokens=1000), 400, "context_length_exceeded", "context"),
        ("/v1/completions", {"model": "fake-model"}, 400, None, "prompt"),
    ],
)
async def test_bad_requests_get_openai_shaped_errors(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], status: int, code: str | None, says: str
) -> None:
    response = await client.post(path, json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == code and says in error["message"]


@pytest.mark.parametrize("attempt", range(10))  # it raced: one run in five before the fix
async def test_a_refusal_with_several_choices_is_one_clean_error(client: httpx.AsyncClient, attempt: int) -> None:
    response = await client.post("/v1/chat/completions", json=chat(max_tokens=64, n=8))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    ("method", "path", "content", "status", "says"),
    [
        ("POST", "/v1/chat/completions", b"\x80", 400, "not valid JSON text (UTF-8)"),
        ("POST", "/v1/nothing", b"{}", 404, "no such endpoint: POST /v1/nothing"),
        ("GET", "/v1/completions", b"", 405, "does not take GET requests"),
    ],
)
async def test_bodies_that_are_not_text_and_unknown_routes_get_openai_shaped_errors(
    client: httpx.AsyncClient, method: str, path: str, content: bytes, status: int, says: str
) -> None:
    headers = {"content-type": "application/json"}
    response = await client.request(method, path, content=content, headers=headers)
    assert response.status_code == status and says in response.json()["error"]["message"]


async def test_a_worker_that_cannot_be_reached_is_skipped(client: httpx.AsyncClient, registry: WorkerRegistry) -> None:
    registry.register("http://dead-worker/api", WorkerStatus(model_names=["fake-model"], queue_length=0))
    registry.workers[WORKER].queue_length = 5  # the dead one looks less busy: it is tried first
    response = await client.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]
    assert list(registry.workers) == [WORKER]  # the controller checked its workers and dropped the dead one


async def test_an_engine_failure_mid_stream_ends_the_stream_with_an_error_event(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    engine.fail_after = 2
    sent = events(await client.post("/v1/chat/completions", json=chat(stream=True)))
    assert sent[-2]["error"]["type"] == "server_error" and "engine failed" in sent[-2]["error"]["message"]
    assert sent[-1] == "[DONE]"


async def test_every_worker_request_is_finished_and_none_is_left_running(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    for body in [chat(), chat(stream=True), chat(n=2, stream=True), chat(model="gpt-4")]:
        await client.post("/v1/chat/completions", json=body)
    assert len(engine.started) == len(engine.finished) == 4
    assert engine.aborted == []


async def test_without_a_controller_the_api_answers_503() -> None:
    api = create_openai_app("http://controller", transport=Hosts({}))  # nothing answers
    async with (
        api.router.lifespan_context(api),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api") as client,
    ):
        models = await client.get("/v1/models")
        answer = await client.post("/v1/chat/completions", json=chat())
    for response in (models, answer):
        assert response.status_code == 503
        assert "the controller cannot be reached" in response.json()["error"]["message"]
