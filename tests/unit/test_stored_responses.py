"""The router and vLLM's stored responses: a new response's id names the replica that made it, and every
request naming that id reaches that replica, from any router instance, or is refused (404, 503).

Replicas are stand-ins that store every response they make, as vLLM does with
VLLM_ENABLE_RESPONSES_API_STORE=1 (one store per replica), each served on a loopback port."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_ops.router.app import create_router_app
from llm_ops.router.policy import RoutedRequest
from llm_ops.router.stored import body_for, tag_in, tag_of
from tests.conftest import wait_until_async
from tests.unit.fake_vllm import asgi_client
from tests.unit.routed import PROBE_INTERVAL, Router, serving_router

pytestmark = pytest.mark.anyio
REPLICAS = ("replica-a", "replica-b")
GONE_ID = "resp_00000000_0123456789abcdef01234567"  # a tag no replica's URL hashes to


class StoringReplica(FastAPI):
    """A replica of fake-model that stores every response it makes under the body's `request_id` and answers
    the routes naming one from its store (404, in vLLM's shape, for one it does not hold)."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: dict[str, dict[str, Any]] = {}
        self.received: list[dict[str, Any]] = []  # the bodies of POST /v1/responses
        self.queries: list[str] = []
        self.status = 200  # else every POST /v1/responses gets this status
        self.add_api_route("/health", lambda: Response(), methods=["GET"])
        self.add_api_route("/metrics", lambda: Response("", media_type="text/plain"), methods=["GET"])
        self.add_api_route("/v1/models", lambda: {"data": [{"id": "fake-model"}]}, methods=["GET"])
        self.add_api_route("/v1/responses", self.create, methods=["POST"])
        self.add_api_route("/v1/responses/{response_id}", self.retrieve, methods=["GET"])
        self.add_api_route("/v1/responses/{response_id}/cancel", self.retrieve, methods=["POST"])

    async def create(self, request: Request) -> Response:
        if self.status != 200:
            return Response(status_code=self.status)
        body = await request.json()
        self.received.append(body)
        previous = body.get("previous_response_id")
        if previous is not None and previous not in self.stored:
            return _not_found(previous)
        response = {"id": body.get("request_id", "resp_the_replicas_own"), "previous_response_id": previous}
        self.stored[response["id"]] = response
        return JSONResponse(response)

    async def retrieve(self, response_id: str, request: Request) -> Response:
        self.queries.append(request.url.query)
        return JSONResponse(self.stored[response_id]) if response_id in self.stored else _not_found(response_id)


def _not_found(response_id: str) -> JSONResponse:
    message = f"Response with id '{response_id}' not found."
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "code": 404}}, 404)


@pytest.fixture
async def router() -> AsyncIterator[Router]:
    """Two storing replicas of fake-model, taken in turn (without affinity, a follow-up would change replica)."""
    async with serving_router("round-robin") as routed:
        for name in REPLICAS:
            routed.add(name, StoringReplica())
        await routed.admitted(*REPLICAS)
        yield routed


def replica(router: Router, name: str) -> StoringReplica:
    app: StoringReplica = router.servers[name].app.app
    return app


def holder(router: Router, response_id: str) -> str:
    """The name of the replica that stored `response_id`."""
    (name,) = [name for name in REPLICAS if response_id in replica(router, name).stored]
    return name


@contextlib.asynccontextmanager
async def second_router(router: Router) -> AsyncIterator[httpx.AsyncClient]:
    """Another router instance over the same controller, sharing nothing with the first, once it has admitted
    both replicas."""
    api = create_router_app(router.servers["controller"].url, policy="round-robin", probe_interval=PROBE_INTERVAL)
    async with api.router.lifespan_context(api), asgi_client(api, "http://second-router") as client:

        async def both_admitted() -> bool:
            listed = (await client.get("/replicas")).json()["replicas"]
            return sum(replica["admitted"] for replica in listed) == len(REPLICAS)

        await wait_until_async(both_admitted, 5, "the second router admits both replicas")
        yield client


async def create(client: httpx.AsyncClient, path: str = "/v1/responses", **fields: Any) -> httpx.Response:
    return await client.post(path, json={"model": "fake-model", "input": "Grüße!"} | fields)


async def test_a_new_response_gets_an_id_that_names_the_replica_that_made_it(router: Router) -> None:
    ids = [(await create(router.client, tools=[], temperature=0.5)).json()["id"] for _ in range(4)]
    assert {holder(router, response_id) for response_id in ids} == set(REPLICAS)  # in turn: both made some
    for response_id in ids:
        assert tag_in(response_id) == tag_of(router.servers[holder(router, response_id)].url)
    received = replica(router, "replica-a").received[0]
    assert received == {"model": "fake-model", "input": "Grüße!", "tools": [], "temperature": 0.5} | {
        "request_id": received["request_id"]
    }


async def test_follow_ups_and_reads_by_id_reach_the_replica_holding_the_response_from_either_router(
    router: Router,
) -> None:
    async with second_router(router) as other:
        first = (await create(router.client)).json()["id"]
        chain = [first]
        for turn in range(6):
            client = (router.client, other)[turn % 2]
            path = ("/v1/responses", "/api/fake-model/v1/responses")[turn // 2 % 2]
            answer = await create(client, path, previous_response_id=chain[-1])
            assert answer.status_code == 200, answer.text
            chain.append(answer.json()["id"])
        reads = [
            await client.get(f"{prefix}/v1/responses/{response_id}?stream=false")
            for client in (router.client, other)
            for prefix in ("", "/api/fake-model")
            for response_id in chain
        ]
        cancelled = await other.post(f"/v1/responses/{first}/cancel")
    name = holder(router, first)
    assert {holder(router, response_id) for response_id in chain} == {name}
    assert [read.status_code for read in reads] == [200] * len(reads) and cancelled.status_code == 200
    assert replica(router, name).queries == ["stream=false"] * len(reads) + [""]
    other_name = next(other for other in REPLICAS if other != name)
    assert router.to(other_name) == []


FOLLOW_UP = {"model": "fake-model", "input": "x", "previous_response_id": GONE_ID}


@pytest.mark.parametrize(
    ("method", "path", "fields", "param"),
    [
        ("GET", f"/v1/responses/{GONE_ID}", {}, "response_id"),
        ("GET", f"/api/fake-model/v1/responses/{GONE_ID}", {}, "response_id"),
        ("POST", f"/v1/responses/{GONE_ID}/cancel", {}, "response_id"),
        ("POST", "/v1/responses", FOLLOW_UP, "previous_response_id"),
        ("POST", "/api/fake-model/v1/responses", FOLLOW_UP, "previous_response_id"),
    ],
)
async def test_a_response_whose_replica_is_gone_gets_404_in_openais_shape(
    router: Router, method: str, path: str, fields: dict[str, Any], param: str
) -> None:
    answer = await router.client.request(method, path, json=fields or None)
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert error["code"] == 404 and error["param"] == param
    assert error["message"].startswith(f"no replica holds response {GONE_ID}: it was made by a replica that has since")
    assert router.to("replica-a") == router.to("replica-b") == []


async def test_a_request_id_the_client_chose_is_kept_and_a_read_by_it_without_a_model_gets_404(router: Router) -> None:
    made = await create(router.client, request_id="my-own-id")
    assert made.json()["id"] == "my-own-id"
    read = await router.client.get("/v1/responses/my-own-id")
    assert read.status_code == 404
    assert "its id was not made by LLM Ops' router" in read.json()["error"]["message"]


async def test_a_follow_up_naming_an_id_the_router_did_not_make_is_routed_by_its_model(router: Router) -> None:
    await create(router.client, request_id="my-own-id")
    answers = [await create(router.client, previous_response_id="my-own-id") for _ in range(2)]
    assert sorted(answer.status_code for answer in answers) == [200, 404]  # in turn: the holder, then the other


async def test_a_request_naming_a_response_is_not_retried_on_another_replica_when_its_replica_answers_503(
    router: Router,
) -> None:
    first = (await create(router.client)).json()["id"]
    name = holder(router, first)
    replica(router, name).status = 503
    before = {other: len(router.to(other)) for other in REPLICAS}
    answer = await create(router.client, previous_response_id=first)
    assert answer.status_code == 503 and answer.json()["error"]["code"] == 503
    assert f"the replica holding response {first} answered 503" in answer.json()["error"]["message"]
    assert {other: len(router.to(other)) for other in REPLICAS} == {
        other: before[other] + (other == name) for other in REPLICAS
    }


async def test_a_read_by_id_whose_replica_cannot_be_reached_gets_503_and_tries_no_other(router: Router) -> None:
    first = (await create(router.client)).json()["id"]
    name = holder(router, first)
    router.stop(name)  # still in the controller's list: its connections are refused
    answer = await router.client.get(f"/v1/responses/{first}")
    assert answer.status_code == 503
    assert f"the replica holding response {first} cannot be reached" in answer.json()["error"]["message"]
    assert [path for other in REPLICAS if other != name for path in router.to(other)] == []


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(document=st.dictionaries(st.text(max_size=8), JSON, min_size=1, max_size=6), ascii_only=st.booleans())
def test_a_new_responses_body_reaches_the_replica_as_sent_but_for_a_request_id_naming_it(
    document: dict[str, Any], ascii_only: bool
) -> None:
    body = json.dumps(document, ensure_ascii=ascii_only).encode()
    sent = json.loads(body_for(RoutedRequest("fake-model", "/v1/responses", body), "http://10.0.0.7:8000"))
    if document.get("request_id") is not None:
        assert sent == document
    else:
        assert sent == document | {"request_id": sent["request_id"]}
        assert tag_in(sent["request_id"]) == tag_of("http://10.0.0.7:8000")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/responses", b"[1, 2]"),
        ("/v1/responses", b'{"model": "fake-model", '),
        ("/v1/responses", b"\xff\xfe"),
        ("/v1/chat/completions", b'{"model": "fake-model"}'),
    ],
)
def test_any_other_body_reaches_the_replica_byte_for_byte(path: str, body: bytes) -> None:
    assert body_for(RoutedRequest("fake-model", path, body), "http://10.0.0.7:8000") == body
