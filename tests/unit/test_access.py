"""Who may call a worker, the router and the controller, what they may send, which routes a worker shows, and
/health."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from llm_ops.access import api_keys_from_environment, is_public, service_headers
from llm_ops.controller.app import create_controller_app
from llm_ops.controller.registry import WorkerRegistry
from llm_ops.router.app import create_router_app
from tests.conftest import free_port
from tests.unit.fake_vllm import (
    HIDDEN_ROUTES,
    FakeVllm,
    asgi_client,
    chat,
    fake_worker,
    fake_worker_to_serve,
    openai_chat,
)
from tests.unit.routed import serving_router

pytestmark = pytest.mark.anyio
KEYS = "sk-first-key, sk-second-key"
SERVICE_KEY = "svc-key-0123456789"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def keyed_worker(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    monkeypatch.setenv("LLM_OPS_API_KEYS", KEYS)
    async with asgi_client(await fake_worker()) as client:
        yield client


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
@pytest.mark.parametrize(
    "path", ["/api/worker_generate", "/api/worker_generate_stream", "/api/worker_get_status", "/api/count_token"]
)
async def test_with_keys_a_worker_refuses_fastchat_routes_a_missing_or_wrong_key_with_401_40101(
    keyed_worker: httpx.AsyncClient, headers: dict[str, str], says: str, path: str
) -> None:
    response = await keyed_worker.post(path, json=chat(), headers=headers)
    assert response.status_code == 401
    assert response.json()["error_code"] == 40101 and says in response.json()["text"]
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "sk-" not in response.text  # the key a client sent is never repeated


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/tokenize")],
)
async def test_with_keys_a_worker_refuses_openai_routes_without_a_key_in_openais_shape(
    keyed_worker: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await keyed_worker.request(method, path, json=openai_chat(), headers=bearer("sk-wrong-key"))
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == 401 and "not valid" in response.json()["error"]["message"]


@pytest.mark.parametrize("key", ["sk-first-key", "sk-second-key"])
async def test_with_keys_any_configured_key_is_accepted(keyed_worker: httpx.AsyncClient, key: str) -> None:
    fastchat = await keyed_worker.post("/api/worker_generate", json=chat(), headers=bearer(key))
    openai = await keyed_worker.post("/v1/chat/completions", json=openai_chat(), headers=bearer(key))
    assert fastchat.status_code == 200 and fastchat.json()["text"] == "The capital is Paris."
    assert openai.status_code == 200


async def test_health_and_metrics_need_no_key(keyed_worker: httpx.AsyncClient) -> None:
    assert (await keyed_worker.get("/health")).status_code == 200
    assert (await keyed_worker.get("/metrics")).status_code == 200


async def test_without_keys_a_worker_is_open(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/worker_generate", json=chat())).status_code == 200


def test_keys_come_from_the_environment_separated_by_commas_or_spaces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_OPS_API_KEYS", "sk-a, sk-b\nsk-c,,")
    assert api_keys_from_environment() == {"sk-a", "sk-b", "sk-c"}
    monkeypatch.delenv("LLM_OPS_API_KEYS")
    assert api_keys_from_environment() == frozenset()


def test_keys_come_from_the_files_the_file_variables_name_when_the_variables_are_unset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "api-keys").write_text("sk-a,sk-b\n")
    (tmp_path / "service-key").write_text("svc-key\n")
    monkeypatch.delenv("LLM_OPS_API_KEYS", raising=False)
    monkeypatch.delenv("LLM_OPS_SERVICE_KEY", raising=False)
    monkeypatch.setenv("LLM_OPS_API_KEYS_FILE", str(tmp_path / "api-keys"))
    monkeypatch.setenv("LLM_OPS_SERVICE_KEY_FILE", str(tmp_path / "service-key"))
    assert api_keys_from_environment() == {"sk-a", "sk-b"}
    assert service_headers() == {"Authorization": "Bearer svc-key"}
    monkeypatch.setenv("LLM_OPS_API_KEYS", "sk-c")
    assert api_keys_from_environment() == {"sk-c"}  # the variable wins


def test_a_key_file_that_cannot_be_read_stops_the_server_instead_of_leaving_it_open(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("LLM_OPS_API_KEYS", raising=False)
    monkeypatch.setenv("LLM_OPS_API_KEYS_FILE", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        api_keys_from_environment()


async def test_with_keys_the_router_refuses_clients_without_one_and_reaches_workers_with_the_service_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLM_OPS_API_KEYS", KEYS)
    monkeypatch.setenv("LLM_OPS_SERVICE_KEY", SERVICE_KEY)
    keys = api_keys_from_environment()
    async with serving_router(
        in_process=True,
        controller_service_key=SERVICE_KEY,
        operator_headers=bearer(min(keys)),
        api_keys=keys,
        service_headers=service_headers(),
    ) as router:
        router.add("worker", fake_worker_to_serve())
        await router.admitted("worker")
        client = router.client
        refused = [
            await client.get("/v1/models"),
            await client.post("/v1/chat/completions", json=openai_chat(), headers=bearer("sk-wrong-key")),
        ]
        models = await client.get("/v1/models", headers=bearer("sk-second-key"))
        answered = await client.post("/v1/chat/completions", json=openai_chat(), headers=bearer("sk-second-key"))
        health = await client.get("/health")
        status = await client.post("/api/fake-model/worker_get_status", headers=bearer("sk-second-key"))
    for response in refused:
        assert response.status_code == 401 and response.json()["error"]["code"] == 401
        assert response.headers["WWW-Authenticate"] == "Bearer" and "sk-" not in response.text
    assert [card["id"] for card in models.json()["data"]] == ["fake-model"]  # the cards came with a key
    assert answered.status_code == 200 and health.status_code == 200
    assert status.status_code == 200  # a service route of the worker, which the router reaches with its key


@pytest.fixture
async def service_keyed_worker(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    monkeypatch.setenv("LLM_OPS_API_KEYS", KEYS)
    monkeypatch.setenv("LLM_OPS_SERVICE_KEY", SERVICE_KEY)
    async with asgi_client(await fake_worker()) as client:
        yield client


async def test_a_workers_status_route_takes_the_service_key_and_refuses_a_client_key(
    service_keyed_worker: httpx.AsyncClient,
) -> None:
    refused = await service_keyed_worker.post("/api/worker_get_status", headers=bearer("sk-first-key"))
    assert refused.status_code == 401 and refused.json() == {
        "text": "this route is for LLM Ops' own services: it needs the service key",
        "error_code": 40101,
    }
    status = await service_keyed_worker.post("/api/worker_get_status", headers=bearer(SERVICE_KEY))
    assert status.status_code == 200 and status.json()["model_names"]


async def test_where_a_worker_publishes_kv_cache_events_is_for_the_service_key_and_404_when_it_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLM_OPS_API_KEYS", KEYS)
    monkeypatch.setenv("LLM_OPS_SERVICE_KEY", SERVICE_KEY)
    async with asgi_client(await fake_worker(flags=["--kv-events-port", "5557"])) as publishing:
        assert (await publishing.get("/kv_events", headers=bearer("sk-first-key"))).status_code == 401
        where = await publishing.get("/kv_events", headers=bearer(SERVICE_KEY))
        assert where.status_code == 200 and where.json() == {"port": 5557, "replay_port": 5558, "topic": "kv"}
    async with asgi_client(await fake_worker()) as silent:
        assert (await silent.get("/kv_events", headers=bearer(SERVICE_KEY))).status_code == 404


async def test_a_workers_prefix_cache_is_reset_with_the_service_key_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_OPS_API_KEYS", KEYS)
    monkeypatch.setenv("LLM_OPS_SERVICE_KEY", SERVICE_KEY)
    vllm = FakeVllm()
    async with asgi_client(await fake_worker(vllm)) as client:
        refused = await client.post("/reset_prefix_cache", headers=bearer("sk-first-key"))
        reset = await client.post("/reset_prefix_cache", headers=bearer(SERVICE_KEY))
    assert refused.status_code == 401 and reset.json() == {"reset": True} and vllm.prefix_cache_resets == 1


@pytest.mark.parametrize("key", ["sk-first-key", SERVICE_KEY])
async def test_a_workers_generation_routes_take_a_client_key_or_the_service_key(
    service_keyed_worker: httpx.AsyncClient, key: str
) -> None:
    response = await service_keyed_worker.post("/api/worker_generate", json=chat(), headers=bearer(key))
    assert response.status_code == 200


async def test_with_a_service_key_the_controller_refuses_registrations_without_it_and_answers_readers() -> None:
    registry = WorkerRegistry()
    controller = create_controller_app(registry, service_key=SERVICE_KEY)
    registration = {"worker_name": "http://w/api", "worker_status": {"model_names": ["m"], "queue_length": 0}}
    async with controller.router.lifespan_context(controller), asgi_client(controller, "http://c") as client:
        refused = [
            await client.post("/register_worker", json=registration),
            await client.post("/register_worker", json=registration, headers=bearer("sk-first-key")),
            await client.post("/receive_heart_beat", json={"worker_name": "http://w/api", "queue_length": 0}),
        ]
        assert registry.workers == {}
        registered = await client.post("/register_worker", json=registration, headers=bearer(SERVICE_KEY))
        models = await client.post("/list_models")  # FastChat's own clients of a controller send no key
    assert [response.status_code for response in refused] == [401, 401, 401]
    assert registered.status_code == 200 and list(registry.workers) == ["http://w/api"]
    assert models.json() == {"models": ["m"]}


def test_our_services_show_each_other_the_service_key_and_without_one_a_client_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLM_OPS_API_KEYS", KEYS)
    assert service_headers() == bearer("sk-first-key")
    monkeypatch.setenv("LLM_OPS_SERVICE_KEY", SERVICE_KEY)
    assert service_headers() == bearer(SERVICE_KEY)


async def _chunked(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 1000):
        yield data[start : start + 1000]


@pytest.mark.parametrize("chunked", [False, True], ids=["with content-length", "chunked"])
async def test_a_body_over_the_limit_gets_413_from_the_worker_and_the_router(chunked: bool) -> None:
    raw = json.dumps(chat() | {"messages": [{"role": "user", "text": "x" * 5000}]}).encode()
    vllm = FakeVllm()
    api = create_router_app(f"http://127.0.0.1:{free_port()}", max_body_bytes=4096)
    async with (
        asgi_client(await fake_worker(vllm, flags=["--max-body-bytes", "4096"])) as worker,
        api.router.lifespan_context(api),
        asgi_client(api, "http://api") as router,
    ):
        fastchat = await worker.post("/api/worker_generate", content=_chunked(raw) if chunked else raw)
        openai = await worker.post("/v1/completions", content=_chunked(raw) if chunked else raw)
        routed = await router.post("/v1/completions", content=_chunked(raw) if chunked else raw)
        small = await worker.post("/api/worker_generate", json=chat())
    assert fastchat.status_code == 413 and fastchat.json()["error_code"] == 40302
    assert "limit of 4096 bytes" in fastchat.json()["text"]
    for response in (openai, routed):
        assert response.status_code == 413 and "limit of 4096 bytes" in response.json()["error"]["message"]
    assert small.status_code == 200 and len(vllm.requests) == 1


@pytest.mark.parametrize("path", HIDDEN_ROUTES)
async def test_a_worker_hides_vllms_admin_and_development_routes(client: httpx.AsyncClient, path: str) -> None:
    response = await client.post(path, json={})
    assert response.status_code == 404
    assert response.json()["error"]["message"] == f"no such endpoint: POST {path}"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/models"), ("POST", "/api/worker_get_status"), ("POST", "/api/model_details"), ("GET", "/metrics")],
)
async def test_a_worker_serves_its_documented_routes(client: httpx.AsyncClient, method: str, path: str) -> None:
    response = await client.request(method, path)
    assert response.status_code == 200


# What a worker answers of the routes vLLM registers for a generate model; {response_id} stands for any id.
DOCUMENTED_ROUTES = {
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/v1/models"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/tokenize"),
    ("POST", "/detokenize"),
    ("POST", "/v1/responses"),
    ("GET", "/v1/responses/{response_id}"),
    ("POST", "/v1/responses/{response_id}/cancel"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
    ("POST", "/reset_prefix_cache"),  # vLLM's in development mode; LLM Ops' otherwise, both for services only
}


def test_of_the_routes_vllm_registers_for_a_generate_model_a_worker_answers_only_the_documented_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fastapi import FastAPI
    from fastapi.routing import APIRoute
    from vllm.entrypoints.launchers.api_server.routers import register_api_routers

    from llm_ops.worker.vllm_api import server_parser

    monkeypatch.setenv("VLLM_SERVER_DEV_MODE", "1")  # its development routes too
    app, args = FastAPI(), server_parser("vllm serve", "").parse_args([])
    app.state.args = args
    root = logging.getLogger()
    level = root.level
    try:
        register_api_routers(args, app, ("generate",))
    finally:
        root.setLevel(level)  # vLLM's SageMaker routes import a package that sets it (llm_ops.worker.launch)
    registered = {
        (method, route.path) for route in app.routes if isinstance(route, APIRoute) for method in route.methods
    }
    public = {(method, path) for method, path in registered if is_public(method, path.format(response_id="resp_1"))}
    assert public == DOCUMENTED_ROUTES
    assert ("POST", "/v1/responses/render") in registered and ("POST", "/collective_rpc") in registered


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/responses"),
        ("GET", "/v1/responses/resp_0123"),
        ("POST", "/v1/responses/resp_0123/cancel"),
        ("POST", "/v1/messages"),
        ("POST", "/v1/messages/count_tokens"),
    ],
)
async def test_the_responses_and_messages_routes_pass_the_public_routes_check(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path, json={"model": "fake-model", "input": "x"})
    # The fake has none of them: vLLM's router answers, not LLM Ops' "no such endpoint".
    assert response.status_code == 404 and response.json() == {"detail": "Not Found"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/responses/render"), ("GET", "/v1/responses/resp_0123/cancel"), ("DELETE", "/v1/responses/r")],
)
async def test_beside_a_stored_responses_routes_the_paths_under_responses_stay_private(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path)
    assert response.status_code == 404 and response.json()["error"]["message"] == f"no such endpoint: {method} {path}"


async def test_tokenize_passes_the_public_routes_check(client: httpx.AsyncClient) -> None:
    response = await client.post("/tokenize", json={"model": "fake-model", "prompt": "x"})
    # The fake has no /tokenize: vLLM's router answers, not LLM Ops' "no such endpoint".
    assert response.status_code == 404 and response.json() == {"detail": "Not Found"}


async def test_health_is_ok_with_counts_and_503_while_draining() -> None:
    vllm = FakeVllm()
    app = await fake_worker(vllm)
    async with asgi_client(app) as client:
        ok = await client.get("/health")
        app.state.llm_ops.draining = True
        draining = await client.get("/health")
        vllm.healthy = False
        dead = await client.get("/health")
    assert ok.status_code == 200
    assert ok.json() == {"status": "ok", "running": 0, "waiting": 0, "engine_requests": 0}
    assert draining.status_code == 503 and draining.json()["status"] == "draining"
    assert dead.status_code == 503 and dead.json()["status"] == "unhealthy"


async def test_a_chat_model_without_any_chat_template_does_not_start() -> None:
    from llm_ops.settings import ConfigurationError

    with pytest.raises(ConfigurationError, match="no chat template"):
        await fake_worker(FakeVllm(chat_template=None))
    await fake_worker(FakeVllm(chat_template=None), flags=["--kind", "completion"])  # a base model starts


async def test_with_keys_the_playground_page_and_its_files_are_open_and_its_calls_need_a_key() -> None:
    api = create_router_app(f"http://127.0.0.1:{free_port()}", api_keys=frozenset({"sk-first-key"}))
    async with asgi_client(api, "http://api") as client:
        page = await client.get("/")
        assert page.status_code == 200 and "LLM Ops playground" in page.text
        for asset in ("/playground/playground.js", "/playground/playground.css"):
            assert (await client.get(asset)).status_code == 200
        assert (await client.get("/v1/models")).status_code == 401
        assert (await client.get("/playground/../../settings.py")).status_code != 200  # no way out of the folder
