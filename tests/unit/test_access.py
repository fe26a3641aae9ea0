"""API keys and the request body limit, on the worker (/api) and on the OpenAI API (/v1)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from llm_ops.access import api_keys_from_environment
from llm_ops.controller.app import create_controller_app
from llm_ops.controller.registry import WorkerRegistry
from llm_ops.openai_api.app import create_openai_app
from llm_ops.protocol.worker import WorkerStatus
from llm_ops.worker.app import create_worker_app
from tests.unit.fake_engine import FakeEngine, open_fake_service
from tests.unit.test_openai_api import Hosts

pytestmark = pytest.mark.anyio
KEYS = frozenset({"sk-first-key", "sk-second-key"})
CHAT = {"model_identifier": "fake-model", "generation_mode": "chat", "messages": [{"role": "user", "text": "Hi"}]}
OPENAI_CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextlib.asynccontextmanager
async def stack(keys: frozenset[str], max_body_bytes: int = 1_048_576) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """In-process worker, controller and OpenAI API, all configured with `keys`; a client for each public one."""
    worker = create_worker_app(lambda: open_fake_service(FakeEngine()), api_keys=keys, max_body_bytes=max_body_bytes)
    headers = {"Authorization": f"Bearer {min(keys)}"} if keys else {}
    registry = WorkerRegistry()
    registry.register("http://worker/api", WorkerStatus(model_names=["fake-model"], queue_length=0))
    controller = create_controller_app(registry, transport=Hosts({"worker": worker}), worker_headers=headers)
    hosts = Hosts({"worker": worker, "controller": controller})
    api = create_openai_app("http://controller", transport=hosts, api_keys=keys, max_body_bytes=max_body_bytes)
    async with (
        worker.router.lifespan_context(worker),
        controller.router.lifespan_context(controller),
        api.router.lifespan_context(api),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=worker), base_url="http://worker") as to_worker,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api") as to_api,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=controller), base_url="http://controller") as to_controller,
    ):
        yield {"worker": to_worker, "api": to_api, "controller": to_controller}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({}, "needs an API key"),
        ({"Authorization": "sk-first-key"}, "needs an API key"),  # no Bearer scheme
        ({"Authorization": "Basic c2stZmlyc3Qta2V5"}, "needs an API key"),
        (bearer("sk-wrong-key"), "not valid"),
        (bearer("sk-first-ke"), "not valid"),
    ],
)
@pytest.mark.parametrize("path", ["/api/worker_generate", "/api/worker_generate_stream", "/api/worker_get_status"])
async def test_with_keys_configured_every_worker_api_route_refuses_a_missing_or_wrong_key_with_401_40101(
    headers: dict[str, str], says: str, path: str
) -> None:
    async with stack(KEYS) as clients:
        response = await clients["worker"].post(path, json=CHAT, headers=headers)
    assert response.status_code == 401
    assert response.json()["error_code"] == 40101 and says in response.json()["text"]
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "sk-" not in response.text  # the key a client sent is never repeated


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions")]
)
@pytest.mark.parametrize("headers", [{}, bearer("sk-wrong-key")])
async def test_with_keys_configured_every_openai_route_refuses_a_missing_or_wrong_key_with_401(
    method: str, path: str, headers: dict[str, str]
) -> None:
    async with stack(KEYS) as clients:
        response = await clients["api"].request(method, path, json=OPENAI_CHAT, headers=headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
    assert "sk-" not in response.text


@pytest.mark.parametrize("key", sorted(KEYS))
async def test_any_configured_key_is_accepted_and_the_api_reaches_the_workers_with_one(key: str) -> None:
    async with stack(KEYS) as clients:
        direct = await clients["worker"].post("/api/worker_generate", json=CHAT, headers=bearer(key))
        via_api = await clients["api"].post("/v1/chat/completions", json=OPENAI_CHAT, headers=bearer(key))
        refreshed = await clients["controller"].post("/refresh_all_workers")
        workers = (await clients["controller"].get("/list_workers")).json()["workers"]
    assert direct.status_code == 200 and direct.json()["text"] == "The capital is Paris."
    assert via_api.status_code == 200
    assert via_api.json()["choices"][0]["message"]["content"] == "The capital is Paris."
    assert refreshed.status_code == 200 and len(workers) == 1  # the controller's status polls carry a key too


async def test_health_checks_need_no_key() -> None:
    async with stack(KEYS) as clients:
        assert (await clients["worker"].get("/health")).status_code == 200
        assert (await clients["api"].get("/health")).status_code == 200


async def test_without_keys_everything_is_open() -> None:
    async with stack(frozenset()) as clients:
        assert (await clients["worker"].post("/api/worker_generate", json=CHAT)).status_code == 200
        assert (await clients["api"].post("/v1/chat/completions", json=OPENAI_CHAT)).status_code == 200


def test_keys_come_from_the_environment_separated_by_commas_or_spaces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_OPS_API_KEYS", "sk-a, sk-b\nsk-c,,")
    assert api_keys_from_environment() == {"sk-a", "sk-b", "sk-c"}
    monkeypatch.delenv("LLM_OPS_API_KEYS")
    assert api_keys_from_environment() == frozenset()


async def _chunked(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 1000):
        yield data[start : start + 1000]


@pytest.mark.parametrize("chunked", [False, True], ids=["with content-length", "chunked"])
async def test_a_body_over_the_limit_gets_413_on_both_servers(chunked: bool) -> None:
    big = CHAT | {"messages": [{"role": "user", "text": "x" * 5000}]}
    raw = json.dumps(big).encode()
    async with stack(frozenset(), max_body_bytes=4096) as clients:
        content = _chunked(raw) if chunked else raw
        worker = await clients["worker"].post("/api/worker_generate", content=content)
        api = await clients["api"].post("/v1/completions", content=_chunked(raw) if chunked else raw)
        small = await clients["worker"].post("/api/worker_generate", json=CHAT)
    assert worker.status_code == 413 and worker.json()["error_code"] == 40302
    assert "limit of 4096 bytes" in worker.json()["text"]
    assert api.status_code == 413 and "limit of 4096 bytes" in api.json()["error"]["message"]
    assert small.status_code == 200
