"""The OpenAI router in front of the workers: bytes in, bytes out, to a replica the controller picks.

Everything is in process: the controller app, and workers that are vLLM stand-ins with LLM Ops attached
(`tests.unit.fake_vllm`), reached by host name through `Hosts`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from llm_ops.controller.app import create_controller_app
from llm_ops.controller.registry import WorkerRegistry
from llm_ops.openai_api.app import create_openai_app
from llm_ops.openai_api.forward import ATTEMPTS
from llm_ops.protocol.worker import WorkerStatus
from tests.unit.fake_vllm import WORKER, FakeVllm, Hosts, asgi_client, fake_worker, openai_chat

pytestmark = pytest.mark.anyio


class Router:
    """The router's client, and what stands behind it."""

    def __init__(self, client: httpx.AsyncClient, hosts: Hosts, registry: WorkerRegistry) -> None:
        self.client, self.hosts, self.registry = client, hosts, registry

    def to(self, host: str) -> list[str]:
        return [path for to, path in self.hosts.sent if to == host]


@pytest.fixture
def registry() -> WorkerRegistry:
    registry = WorkerRegistry()
    registry.register(WORKER, WorkerStatus(model_names=["fake-model", "fake.model-1.5"], queue_length=0))
    return registry


@pytest.fixture
async def router(vllm: FakeVllm, registry: WorkerRegistry) -> AsyncIterator[Router]:
    hosts = Hosts({"worker-a": await fake_worker(vllm)})
    hosts.apps["controller"] = create_controller_app(registry, transport=hosts)
    api = create_openai_app("http://controller", transport=hosts)
    async with (
        hosts.apps["controller"].router.lifespan_context(hosts.apps["controller"]),
        api.router.lifespan_context(api),
        asgi_client(api, "http://api") as client,
    ):
        yield Router(client, hosts, registry)


async def test_a_request_reaches_the_worker_and_its_answer_comes_back_byte_for_byte(router: Router) -> None:
    received: list[bytes] = []
    raw_worker = FastAPI()

    @raw_worker.post("/v1/completions")
    async def answer(raw: Request) -> Response:
        received.append(await raw.body())
        return Response(b'{"odd":  "spacing",\n "\xc3\xa9": 1}', status_code=201, media_type="application/x-odd")

    router.hosts.apps["raw-worker"] = raw_worker
    router.registry.register("http://raw-worker/api", WorkerStatus(model_names=["raw-model"], queue_length=0))
    sent = b'{"model":"raw-model",  "prompt": "\\u00e9t\xc3\xa9", "unknown_field": [1, 2]}'
    response = await router.client.post("/v1/completions", content=sent, headers={"content-type": "application/json"})
    assert received == [sent]
    assert response.status_code == 201 and response.headers["content-type"] == "application/x-odd"
    assert response.content == b'{"odd":  "spacing",\n "\xc3\xa9": 1}'


async def test_a_chat_completion_is_answered_by_the_worker(router: Router) -> None:
    response = await router.client.post("/v1/chat/completions", json=openai_chat(temperature=0))
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "The capital is Paris."
    assert router.to("worker-a") == ["/v1/chat/completions"]


async def test_the_body_reaches_the_worker_unchanged(router: Router, vllm: FakeVllm) -> None:
    body = b'{"model": "fake-model",   "prompt": "Once", "max_tokens": 3, "seed": 7}'
    response = await router.client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200 and response.json()["choices"][0]["text"] == "The capital is"
    (request,) = vllm.requests
    assert (request.prompt, request.max_tokens, request.seed) == ("Once", 3, 7)  # type: ignore[attr-defined]


async def test_a_stream_comes_back_as_the_workers_server_sent_events(router: Router) -> None:
    body = {"model": "fake-model", "prompt": "x", "stream": True, "stream_options": {"include_usage": True}}
    response = await router.client.post("/v1/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [event.removeprefix("data: ") for event in response.text.split("\n\n") if event]
    assert events[-1] == "[DONE]"
    documents = [json.loads(event) for event in events[:-1]]
    assert "".join(choice["text"] for d in documents for choice in d["choices"]) == "The capital is Paris."
    assert documents[-1]["usage"]["completion_tokens"] == 5


async def test_the_workers_refusal_comes_back_with_its_status_and_body(router: Router, vllm: FakeVllm) -> None:
    response = await router.client.post("/v1/completions", json={"model": "fake-model", "prompt": "x " * 600})
    assert response.status_code == 400
    assert "maximum context length" in response.json()["error"]["message"]


async def test_an_unknown_model_gets_404_in_openais_shape(router: Router) -> None:
    response = await router.client.post("/v1/chat/completions", json=openai_chat(model="gpt-4"))
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "The model `gpt-4` does not exist or has no worker",
            "type": "BadRequestError",
            "param": "model",
            "code": 404,
        }
    }
    assert router.to("worker-a") == []


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b'{"prompt": "x"}', "must name a `model`"),
        (b'{"model": 3}', "must name a `model`"),
        (b"[]", "must name a `model`"),
        (b"{", "not valid JSON"),
    ],
)
async def test_a_body_without_a_model_gets_400_in_openais_shape(router: Router, content: bytes, says: str) -> None:
    response = await router.client.post("/v1/completions", content=content)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == 400 and error["type"] == "BadRequestError" and says in error["message"]


async def test_tokenize_is_routed_by_its_model_too(router: Router) -> None:
    app = router.hosts.apps["worker-a"]

    @app.post("/tokenize")
    async def tokenize(raw: Request) -> JSONResponse:
        return JSONResponse({"count": len((await raw.json())["prompt"].split())})

    app.router.routes.insert(0, app.router.routes.pop())  # before the fake's other routes
    response = await router.client.post("/tokenize", json={"model": "fake-model", "prompt": "one two"})
    assert response.json() == {"count": 2} and router.to("worker-a") == ["/tokenize"]


async def test_a_replica_that_refuses_the_connection_is_skipped_for_another(router: Router) -> None:
    router.registry.register("http://dead-worker/api", WorkerStatus(model_names=["fake-model"], queue_length=0))
    router.registry.workers[WORKER].queue_length = 5  # the dead one looks less busy: it is tried first
    response = await router.client.post("/v1/chat/completions", json=openai_chat())
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]
    assert router.to("dead-worker")[0] == "/v1/chat/completions"
    assert list(router.registry.workers) == [WORKER]  # the controller checked its workers and dropped the dead one


async def test_a_replica_answering_503_is_skipped_for_another(router: Router) -> None:
    draining = FastAPI()
    draining.add_api_route("/v1/chat/completions", lambda: Response(status_code=503), methods=["POST"])
    draining.add_api_route("/api/worker_get_status", lambda: Response(status_code=503), methods=["POST"])
    router.hosts.apps["draining-worker"] = draining
    router.registry.register("http://draining-worker/api", WorkerStatus(model_names=["fake-model"], queue_length=0))
    router.registry.workers[WORKER].queue_length = 5
    response = await router.client.post("/v1/chat/completions", json=openai_chat())
    assert response.status_code == 200
    assert router.to("draining-worker")[0] == "/v1/chat/completions"
    assert router.to("worker-a")[-1] == "/v1/chat/completions"


async def test_a_model_whose_only_replica_is_dead_gets_404_once_the_controller_has_dropped_it(router: Router) -> None:
    router.registry.workers.clear()
    router.registry.register("http://dead-worker/api", WorkerStatus(model_names=["fake-model"], queue_length=0))
    response = await router.client.post("/v1/chat/completions", json=openai_chat())
    # the refused connection has the controller check its workers: it drops the dead one, none is left
    assert router.to("dead-worker") == ["/v1/chat/completions", "/api/worker_get_status"]
    assert router.registry.workers == {}
    assert response.status_code == 404
    assert response.json()["error"] == {
        "message": "The model `fake-model` does not exist or has no worker",
        "type": "BadRequestError",
        "param": "model",
        "code": 404,
    }


async def test_a_model_whose_replicas_refuse_every_attempt_gets_503(router: Router) -> None:
    refusing = FastAPI()  # 503 to every request (its engine died, say), while its status still answers
    refusing.add_api_route("/v1/chat/completions", lambda: Response(status_code=503), methods=["POST"])
    status = WorkerStatus(model_names=["fake-model"], queue_length=0)
    refusing.add_api_route("/api/worker_get_status", lambda: status, methods=["POST"])
    router.hosts.apps["refusing-worker"] = refusing
    router.registry.workers.clear()
    router.registry.register("http://refusing-worker/api", status)
    response = await router.client.post("/v1/chat/completions", json=openai_chat())
    assert router.to("refusing-worker").count("/v1/chat/completions") == ATTEMPTS
    assert response.status_code == 503 and response.json()["error"]["code"] == 503
    assert response.json()["error"]["message"] == "no worker serving fake-model could be reached; try again"


async def test_models_lists_the_workers_model_cards_with_root_set_to_the_id(router: Router) -> None:
    response = await router.client.get("/v1/models")
    data = response.json()["data"]
    assert response.json()["object"] == "list"
    assert [card["id"] for card in data] == ["fake-model", "fake.model-1.5"]
    assert all(card["root"] == card["id"] and card["max_model_len"] == 512 for card in data)


async def test_models_merges_the_cards_of_every_worker(router: Router) -> None:
    other = await fake_worker(FakeVllm(max_model_len=2048), names=["other-model"])
    router.hosts.apps["worker-b"] = other
    router.registry.register("http://worker-b/api", WorkerStatus(model_names=["other-model"], queue_length=0))
    router.registry.register("http://gone-worker/api", WorkerStatus(model_names=["gone-model"], queue_length=0))
    data = (await router.client.get("/v1/models")).json()["data"]
    assert [(card["id"], card["max_model_len"]) for card in data] == [
        ("fake-model", 512),
        ("fake.model-1.5", 512),
        ("other-model", 2048),
    ]


async def test_without_a_controller_the_router_answers_503() -> None:
    api = create_openai_app("http://controller", transport=Hosts({}))  # nothing answers
    async with (
        api.router.lifespan_context(api),
        asgi_client(api, "http://api") as client,
    ):
        models = await client.get("/v1/models")
        answer = await client.post("/v1/chat/completions", json=openai_chat())
    for response in (models, answer):
        assert response.status_code == 503
        assert "the controller cannot be reached" in response.json()["error"]["message"]


@pytest.mark.parametrize(("method", "path", "status"), [("POST", "/v2/nothing", 404), ("GET", "/v1/completions", 405)])
async def test_unknown_routes_and_methods_get_openai_shaped_errors(
    router: Router, method: str, path: str, status: int
) -> None:
    response = await router.client.request(method, path)
    assert response.status_code == status and response.json()["error"]["code"] == status
