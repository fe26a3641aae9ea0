"""The router in front of the workers: bytes in, bytes out, to a replica it picks, whichever API.

Everything is in process: the controller app, workers that are vLLM stand-ins with LLM Ops attached
(`tests.unit.fake_vllm`) and scripted replicas (`ScriptedReplica`), each served on a loopback port."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from llm_ops.router import watch
from llm_ops.router.app import create_router_app
from llm_ops.router.replicas import Replica
from tests.conftest import free_port, wait_until_async
from tests.unit.fake_vllm import NAMES, FakeVllm, asgi_client, chat, fake_worker, fake_worker_to_serve, openai_chat
from tests.unit.routed import PROBE_INTERVAL, PROBED, Router, serving_router
from tests.unit.served import served

pytestmark = pytest.mark.anyio


class ScriptedReplica(FastAPI):
    """A replica whose health, load and answers a test sets: its generation routes stream `chunks`
    (FastChat's framing or SSE, by route) and hold the last one until `release` is set."""

    def __init__(self, capacity: int = 4) -> None:
        super().__init__()
        self.health, self.capacity, self.running, self.health_delay = 200, capacity, 0, 0.0
        self.release = threading.Event()  # set from the test, waited for in a served replica's thread
        self.release.set()
        self.metrics_asked, self.metrics_release = threading.Event(), threading.Event()
        self.metrics_release.set()
        self.add_api_route("/health", self.answer_health, methods=["GET"])
        self.add_api_route("/metrics", self.metrics, methods=["GET"])
        self.add_api_route("/v1/models", lambda: {"data": [{"id": "fake-model", "max_model_len": 64}]}, methods=["GET"])
        for path in ("/v1/completions", "/api/worker_generate_stream"):
            self.add_api_route(path, self.generate, methods=["POST"])

    def answer_with(self, path: str, endpoint: Any) -> None:
        """`POST path` answered by `endpoint` instead."""
        self.add_api_route(path, endpoint, methods=["POST"])
        self.router.routes.insert(0, self.router.routes.pop())

    async def answer_health(self) -> Response:
        await asyncio.sleep(self.health_delay)
        return Response(status_code=self.health)

    def metrics(self) -> Response:
        self.metrics_asked.set()
        self.metrics_release.wait()
        lines = [
            f"llm_ops_requests_running {self.running}",
            "llm_ops_requests_waiting 0",
            f"llm_ops_requests_capacity {self.capacity}",
            'vllm:kv_cache_usage_perc{engine="0",model_name="fake-model"} 0.25',
        ]
        return Response("\n".join(lines) + "\n", media_type="text/plain")

    async def generate(self, request: Request) -> Response:
        fastchat = request.url.path.startswith("/api/")

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"text": "Hel", "error_code": 0}\0' if fastchat else b'data: {"text": "Hel"}\n\n'
            while not self.release.is_set():
                await asyncio.sleep(0.01)
            yield b'{"text": "Hello", "error_code": 0}\0' if fastchat else b"data: [DONE]\n\n"

        media = "application/json" if fastchat else "text/event-stream"
        return StreamingResponse(chunks(), media_type=media)


@pytest.fixture
def policy() -> str:
    return "least-loaded"


@pytest.fixture
async def live_router(policy: str) -> AsyncIterator[Router]:
    async with serving_router(policy) as router:
        yield router


@pytest.fixture
async def router(vllm: FakeVllm, policy: str) -> AsyncIterator[Router]:
    """The router, with one replica: a worker (LLM Ops over the vLLM stand-in) serving fake-model and fake.model-1.5."""
    async with serving_router(policy) as routed:
        routed.add("worker-a", fake_worker_to_serve(vllm), NAMES)
        await routed.admitted("worker-a")
        yield routed


async def test_a_request_reaches_the_worker_and_its_answer_comes_back_byte_for_byte(router: Router) -> None:
    received: list[bytes] = []
    raw_worker = ScriptedReplica()

    async def answer(raw: Request) -> Response:
        received.append(await raw.body())
        return Response(b'{"odd":  "spacing",\n "\xc3\xa9": 1}', status_code=201, media_type="application/x-odd")

    raw_worker.answer_with("/v1/completions", answer)
    router.add("raw-worker", raw_worker, ("raw-model",))
    await router.admitted("worker-a", "raw-worker")
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
    app = router.servers["worker-a"].app.app

    @app.post("/tokenize")
    async def tokenize(raw: Request) -> JSONResponse:
        return JSONResponse({"count": len((await raw.json())["prompt"].split())})

    app.router.routes.insert(0, app.router.routes.pop())  # before the fake's other routes
    response = await router.client.post("/tokenize", json={"model": "fake-model", "prompt": "one two"})
    assert response.json() == {"count": 2} and router.to("worker-a") == ["/tokenize"]


async def test_fastchats_routes_of_a_model_reach_a_replicas_fastchat_routes(router: Router) -> None:
    response = await router.client.post("/api/fake-model/worker_generate", json=chat(temperature=0))
    assert response.status_code == 200 and response.json()["text"] == "The capital is Paris."
    status = await router.client.post("/api/fake.model-1.5/worker_get_status")
    assert status.json()["model_names"] == ["fake-model", "fake.model-1.5"]
    assert router.to("worker-a") == ["/api/worker_generate", "/api/worker_get_status"]


@pytest.mark.parametrize(
    ("path", "worker_path"),
    [("/api/fake-model/v1/chat/completions", "/v1/chat/completions"), ("/api/fake-model/v1/models", "/v1/models")],
)
async def test_a_models_own_openai_routes_reach_a_replicas_openai_routes(
    router: Router, path: str, worker_path: str
) -> None:
    before = len(router.sent)
    response = await router.client.request("GET" if path.endswith("models") else "POST", path, json=openai_chat())
    assert response.status_code == 200
    sent = [sent for name, sent in router.sent[before:] if name == "worker-a" and sent not in PROBED - {worker_path}]
    assert sent == [worker_path]


async def test_an_unknown_model_on_fastchats_route_gets_404_in_fastchats_shape(router: Router) -> None:
    response = await router.client.post("/api/gpt-4/worker_generate", json=chat(model_identifier="gpt-4"))
    assert response.status_code == 404
    assert response.json() == {"text": "The model `gpt-4` does not exist or has no worker", "error_code": 40301}


async def test_a_replica_that_refuses_the_connection_is_set_aside_and_another_answers(live_router: Router) -> None:
    live_router.add("dying", ScriptedReplica())
    live_router.add("living", ScriptedReplica())
    await live_router.admitted("dying", "living")
    live_router.stop("dying")  # its connections are refused from now on
    answers = [await live_router.client.post("/v1/completions", json={"model": "fake-model"}) for _ in range(4)]
    assert [answer.status_code for answer in answers] == [200] * 4
    assert len(live_router.to("dying")) <= 1 and (await live_router.replicas())["dying"]["admitted"] is False


async def test_a_replica_answering_503_is_set_aside_not_retried_and_admitted_again_once_healthy(
    live_router: Router,
) -> None:
    failing, other = ScriptedReplica(), ScriptedReplica()

    def draining() -> Response:  # as a worker that has begun to drain
        failing.health = 503
        return Response(status_code=503)

    failing.answer_with("/v1/completions", draining)
    live_router.add("failing", failing)
    live_router.add("other", other)
    await live_router.admitted("failing", "other")
    other.running = 3  # the failing one looks less busy: it is tried first
    await wait_until_async(_replica_says(live_router, "other", "running", 3), 2, "the router reads the other's load")
    answer = await live_router.client.post("/v1/completions", json={"model": "fake-model"})
    assert answer.status_code == 200
    assert live_router.to("failing") == ["/v1/completions"] and live_router.to("other") == ["/v1/completions"]
    assert (await live_router.replicas())["failing"]["admitted"] is False
    failing.health = 200
    await live_router.admitted("failing", "other")


async def test_a_request_whose_every_replica_fails_gets_503_and_tries_each_once(live_router: Router) -> None:
    refusing = [ScriptedReplica(), ScriptedReplica()]
    for name, replica in zip(("refusing-1", "refusing-2"), refusing, strict=True):
        replica.answer_with("/v1/chat/completions", lambda: Response(status_code=503))
        live_router.add(name, replica)
    await live_router.admitted("refusing-1", "refusing-2")
    response = await live_router.client.post("/v1/chat/completions", json=openai_chat())
    assert live_router.to("refusing-1") == live_router.to("refusing-2") == ["/v1/chat/completions"]
    assert response.status_code == 503 and response.json()["error"]["code"] == 503
    assert response.json()["error"]["message"] == "no replica of fake-model could be reached (2 tried); try again"


async def test_a_request_counts_on_its_replica_until_its_answer_ends(live_router: Router) -> None:
    replica = ScriptedReplica()
    replica.release.clear()
    live_router.add("scripted", replica)
    await live_router.admitted("scripted")
    async with live_router.client.stream(
        "POST", "/v1/completions", json={"model": "fake-model", "stream": True}
    ) as answer:
        assert (await live_router.replicas())["scripted"]["in_flight"] == 1
        replica.release.set()
        await answer.aread()
    await wait_until_async(_replica_says(live_router, "scripted", "in_flight", 0), 2, "the request stops counting")


async def test_a_client_that_leaves_mid_answer_stops_counting_on_the_replica(live_router: Router) -> None:
    replica = ScriptedReplica()
    replica.release.clear()  # never set: the answer would go on forever
    live_router.add("scripted", replica)
    await live_router.admitted("scripted")
    async with live_router.client.stream(
        "POST", "/v1/completions", json={"model": "fake-model", "stream": True}
    ) as answer:
        async for _ in answer.aiter_raw():
            break
    await wait_until_async(_replica_says(live_router, "scripted", "in_flight", 0), 2, "the request stops counting")


def _replica_says(router: Router, host: str, field: str, value: int) -> Any:
    """A condition for `wait_until_async`: the router's /replicas gives replica `host` this `field`."""

    async def check() -> bool:
        return bool((await router.replicas())[host][field] == value)

    return check


@pytest.mark.parametrize(
    ("path", "body", "refusal"),
    [
        ("/v1/completions", {"model": "fake-model", "stream": True}, lambda error: error["error"]["code"] == 429),
        ("/api/fake-model/v1/completions", {"model": "fake-model"}, lambda error: error["error"]["code"] == 429),
        ("/api/fake-model/worker_generate_stream", chat(), lambda error: error["error_code"] == 42903),
    ],
)
async def test_when_every_replica_is_full_the_router_answers_429_with_retry_after_at_once(
    live_router: Router, path: str, body: dict[str, Any], refusal: Any
) -> None:
    replica = ScriptedReplica(capacity=1)
    replica.release.clear()
    live_router.add("scripted", replica)
    await live_router.admitted("scripted")
    async with live_router.client.stream("POST", path, json=body):
        refused = await live_router.client.post(path, json=body)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1" and refusal(refused.json())
        assert "every replica of fake-model is at capacity" in refused.text
        replica.release.set()
    worker_path = path.replace("/api/fake-model/v1", "/v1").replace("/api/fake-model", "/api")
    assert live_router.to("scripted") == [worker_path]  # the refused one never reached it


async def test_load_the_worker_reports_from_other_routers_counts_against_its_room(live_router: Router) -> None:
    replica = ScriptedReplica(capacity=2)
    replica.running = 2  # another router's requests
    live_router.add("scripted", replica)
    await live_router.admitted("scripted")
    refused = await live_router.client.post("/v1/completions", json={"model": "fake-model"})
    assert refused.status_code == 429


def breaking_after(first_event: bytes) -> Callable[[Request], Awaitable[Response]]:
    """A replica's answer: an event stream that sends `first_event`, then its connection breaks."""

    async def broken(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            yield first_event
            await asyncio.sleep(0.1)  # the first event is on its way before the connection breaks
            raise httpx.ReadError("connection reset")

        return StreamingResponse(chunks(), media_type="text/event-stream")

    return broken


async def test_a_worker_that_breaks_mid_stream_ends_it_with_an_error_event_and_is_set_aside(
    live_router: Router,
) -> None:
    breaking = ScriptedReplica()
    breaking.answer_with("/v1/completions", breaking_after(b'data: {"text": "Hel"}\n\n'))
    live_router.add("breaking", breaking)
    await live_router.admitted("breaking")
    answer = await live_router.client.post("/v1/completions", json={"model": "fake-model", "stream": True})
    events = [json.loads(event.removeprefix("data: ")) for event in answer.text.split("\n\n") if event]
    assert events[0] == {"text": "Hel"}
    assert events[-1]["error"]["code"] == 502 and "stopped answering" in events[-1]["error"]["message"]
    stopped = _replica_says(live_router, "breaking", "in_flight", 0)
    await wait_until_async(stopped, 2, "the broken request stops counting")


async def test_a_broken_anthropic_messages_stream_ends_with_anthropics_named_error_event(live_router: Router) -> None:
    """Anthropic's clients read only named events: an unnamed `data: {"error": ...}` would end the stream silently."""
    breaking = ScriptedReplica()
    breaking.answer_with("/v1/messages", breaking_after(b'event: message_start\ndata: {"type": "message_start"}\n\n'))
    live_router.add("breaking", breaking)
    await live_router.admitted("breaking")
    answer = await live_router.client.post("/v1/messages", json={"model": "fake-model", "stream": True})
    last = answer.text.rstrip("\n").split("\n\n")[-1]
    name, data = last.split("\n")
    assert name == "event: error"
    error = json.loads(data.removeprefix("data: "))
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert "stopped answering" in error["error"]["message"]


async def test_a_replica_answering_its_health_checks_late_is_set_aside_only_after_three_in_a_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker on a saturated CPU, busy with long prefills, answers late and is serving all the same."""
    monkeypatch.setattr(watch, "PROBE_TIMEOUT", aiohttp.ClientTimeout(total=0.05))
    slow = ScriptedReplica()
    slow.health_delay = 0.2
    with served(slow) as url:
        replica = Replica(url, frozenset({"fake-model"}), admitted=True)
        async with aiohttp.ClientSession() as http:
            for _ in range(watch.SLOW_PROBES_TO_SET_ASIDE - 1):
                await watch.probe(http, replica)
            assert replica.admitted
            await watch.probe(http, replica)
            assert not replica.admitted
            slow.health_delay = 0.0
            await watch.probe(http, replica)
            assert replica.admitted and replica.slow_probes == 0


async def test_a_health_check_that_passed_before_a_request_set_the_replica_aside_does_not_admit_it_again() -> None:
    draining = ScriptedReplica()
    draining.metrics_release.clear()
    with served(draining) as url:
        replica = Replica(url, frozenset({"fake-model"}), admitted=True)
        async with aiohttp.ClientSession() as http:
            checking = asyncio.create_task(watch.probe(http, replica))
            await wait_until_async(draining.metrics_asked.is_set, 5, "the check passes /health and asks for /metrics")
            draining.health = 503
            replica.set_aside("it answered 503")
            draining.metrics_release.set()
            await checking
            assert not replica.admitted
            await watch.probe(http, replica)
            assert not replica.admitted
            draining.health = 200
            await watch.probe(http, replica)
            assert replica.admitted


async def test_least_loaded_sends_each_request_to_the_replica_with_the_most_room(live_router: Router) -> None:
    busy, idle = ScriptedReplica(capacity=4), ScriptedReplica(capacity=4)
    busy.running = 3
    live_router.add("busy", busy)
    live_router.add("idle", idle)
    await live_router.admitted("busy", "idle")
    for _ in range(3):
        await live_router.client.post("/v1/completions", json={"model": "fake-model"})
    assert live_router.to("busy") == [] and len(live_router.to("idle")) == 3


@pytest.mark.parametrize("policy", ["round-robin"])
async def test_round_robin_sends_requests_to_each_replica_in_turn(live_router: Router) -> None:
    live_router.add("first", ScriptedReplica())
    live_router.add("second", ScriptedReplica())
    await live_router.admitted("first", "second")
    for _ in range(4):
        await live_router.client.post("/v1/completions", json={"model": "fake-model"})
    assert len(live_router.to("first")) == len(live_router.to("second")) == 2


@pytest.mark.parametrize("policy", ["prefix"])
async def test_prefix_sends_fastchat_and_openai_chats_with_one_history_to_the_replica_that_had_it(
    live_router: Router,
) -> None:
    document = "A long shared document. " * 100
    for name in ("first", "second"):
        replica = ScriptedReplica()
        replica.answer_with("/v1/chat/completions", replica.generate)
        live_router.add(name, replica)
    await live_router.admitted("first", "second")
    fastchat = {"generation_mode": "chat", "system_message": document, "messages": [{"role": "human", "text": "Hi"}]}
    await live_router.client.post("/api/fake-model/worker_generate_stream", json=fastchat)
    holder = "first" if live_router.to("first") else "second"
    for question in ("Hi", "Who wrote it?", "When?"):
        messages = [{"role": "system", "content": document}, {"role": "user", "content": question}]
        await live_router.client.post("/v1/chat/completions", json={"model": "fake-model", "messages": messages})
    assert len(live_router.to(holder)) == 4 and len(live_router.to("first") + live_router.to("second")) == 4


async def test_models_lists_the_workers_model_cards_with_root_set_to_the_id(router: Router) -> None:
    response = await router.client.get("/v1/models")
    data = response.json()["data"]
    assert response.json()["object"] == "list"
    assert [card["id"] for card in data] == ["fake-model", "fake.model-1.5"]
    assert all(card["root"] == card["id"] and card["max_model_len"] == 512 for card in data)
    assert router.to("worker-a") == []  # from what the router knows: no request reaches a worker


async def test_models_merges_the_cards_of_every_admitted_replica(router: Router) -> None:
    router.add("worker-b", await fake_worker(FakeVllm(max_model_len=2048), names=["other-model"]), ("other-model",))
    router.add_dead("gone-worker", ("gone-model",))
    await router.admitted("worker-a", "worker-b")
    data = (await router.client.get("/v1/models")).json()["data"]
    assert [(card["id"], card["max_model_len"]) for card in data] == [
        ("fake-model", 512),
        ("fake.model-1.5", 512),
        ("other-model", 2048),
    ]


async def test_a_router_that_has_not_heard_from_the_controller_answers_503() -> None:
    nothing = f"http://127.0.0.1:{free_port()}"
    api = create_router_app(nothing, probe_interval=PROBE_INTERVAL)
    async with api.router.lifespan_context(api), asgi_client(api, "http://api") as client:
        answer = await client.post("/v1/chat/completions", json=openai_chat())
    assert answer.status_code == 503
    assert "has not heard from the controller yet" in answer.json()["error"]["message"]


async def test_with_the_controller_gone_the_router_keeps_routing_to_the_replicas_it_knows(router: Router) -> None:
    router.stop("controller")
    await asyncio.sleep(10 * PROBE_INTERVAL)  # the router has found the controller gone
    response = await router.client.post("/v1/chat/completions", json=openai_chat())
    assert response.status_code == 200


@pytest.mark.parametrize(("method", "path", "status"), [("POST", "/v2/nothing", 404), ("GET", "/v1/completions", 405)])
async def test_unknown_routes_and_methods_get_openai_shaped_errors(
    router: Router, method: str, path: str, status: int
) -> None:
    response = await router.client.request(method, path)
    assert response.status_code == status and response.json()["error"]["code"] == status


@pytest.mark.parametrize("path", ["/api/fake-model", "/api/worker_get_status"])
async def test_a_path_without_a_model_and_a_route_gets_404_in_fastchats_shape(router: Router, path: str) -> None:
    response = await router.client.post(path)
    assert response.status_code == 404
    assert response.json() == {"text": f"no such endpoint: POST {path}", "error_code": 40001}


async def test_a_client_that_leaves_before_a_non_streaming_answer_closes_the_workers_request(
    live_router: Router,
) -> None:
    replica, worker_saw_it_leave = ScriptedReplica(), threading.Event()

    async def answers_at_the_end(request: Request) -> Response:  # as a worker that does not stream
        while not await request.is_disconnected():
            await asyncio.sleep(0.01)
        worker_saw_it_leave.set()
        return Response()

    replica.answer_with("/v1/completions", answers_at_the_end)
    live_router.add("slow", replica)
    await live_router.admitted("slow")
    with pytest.raises(httpx.ReadTimeout):
        await live_router.client.post("/v1/completions", json={"model": "fake-model"}, timeout=0.3)
    await wait_until_async(worker_saw_it_leave.is_set, 2, "the worker to see the client leave")
    await wait_until_async(_replica_says(live_router, "slow", "in_flight", 0), 2, "the request stops counting")


async def test_a_websocket_upgrade_is_refused(live_router: Router) -> None:
    """No route of the router is meant for WebSockets: an upgrade gets no 101, with or without a model."""
    host, port = live_router.client.base_url.host, live_router.client.base_url.port
    for path in ("/v1/realtime", "/api/fake-model/v1/realtime"):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        status_line = await reader.readline()
        writer.close()
        assert status_line.split()[1] == b"403", status_line
