"""Property-based fuzzing of the worker's FastChat routes and the router from OpenAPI schemas.

The worker's FastChat routes parse their bodies by hand (FastChat's format or ours), so their app has no
request schema: the schema fuzzed is `worker_schema()`, built from the request models the routes check
bodies against (`GenerateRequest`, `CountTokenRequest`, `EmbeddingsRequest`). The router's is its own
`app.openapi()`. The worker's OpenAI paths, `/v1/completions` and `/v1/chat/completions` (what
`/api/<model>/v1/...` reaches behind Traefik, and what the router forwards to), are fuzzed, on the worker
and through the router, from `openai_paths_schema()`, built from vLLM's own request models, which vLLM's
routes validate bodies with.
Schemathesis turns a schema into Hypothesis strategies of requests: schema-valid
(positive), schema-violating (negative), and schema-valid with lone UTF-16 surrogates (`"\\ud800"`,
valid JSON escapes that Hypothesis's text strategy never produces) spliced into their strings. Each
request goes to the app in-process (httpx's ASGI transport, which re-raises whatever the app lets
escape), with the app's lifespan entered once per test on an event loop of its own, and must:

- be answered within `REQUEST_TIMEOUT` (no hang),
- not make the app raise,
- not get a 5xx, nor a 200 stream that carries an error (the scripted vLLM never fails),
- if refused, be refused in the app's error shape: FastChat's `{"text", "error_code"}` from the
  worker, vLLM's `{"error": {"message", "type", "param", "code"}}` from the router,
- if schema-violating, be refused with a 4xx (not answered as if it were valid),

and leave nothing in flight: the worker's `queue_length` is 0 and every generation vLLM started
has finished or been aborted, after each request and after the run.
"""

from __future__ import annotations

import contextlib
import json
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.from_thread
import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, assume, given, note, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.exceptions import VLLMError

from llm_ops.access import is_fastchat_path
from llm_ops.protocol.errors import ErrorCode
from llm_ops.protocol.framing import DELIMITER
from llm_ops.protocol.worker import MAX_NEW_TOKENS, CountTokenRequest, EmbeddingsRequest, GenerateRequest
from llm_ops.worker.fastchat import GENERATE_BODY
from tests.unit.fake_vllm import FakeVllm, asgi_client, fake_worker, fake_worker_to_serve
from tests.unit.routed import serving_router

pytestmark = pytest.mark.slow

REQUEST_TIMEOUT = 5.0  # seconds; the scripted vLLM answers in milliseconds, so running out means a hang
POSITIVE, NEGATIVE, SURROGATES = 300, 200, 100  # generated requests per test: 900 in all
WORKER_MODELS = ["fake-model", "fake.model-1.5"]  # the names fake_worker serves
API_MODELS = ["fake-model"]  # the name the API's controller knows the worker by
# Requests per test to vLLM's OpenAI paths (/v1/completions, /v1/chat/completions): 750 in all, some 30 s.
OPENAI_POSITIVE, OPENAI_NEGATIVE, OPENAI_ROUTED = 300, 200, 250
CHEAP_TOKENS, CHEAP_N = 8, 2  # caps on schema-valid requests to those paths: each answers in milliseconds
WORKER_ERROR_CODES = frozenset(int(code) for code in ErrorCode)
OPENAI_ERROR_FIELDS: dict[str, type | tuple[type, ...]] = {
    "message": str,
    "type": str,
    "param": (str, type(None)),
    "code": int,
}

Apps = Callable[[FakeVllm], contextlib.AbstractAsyncContextManager[tuple[FastAPI, FastAPI, dict[str, Any]]]]


GENERATION_BODIES: dict[str, type[Any]] = {
    "/api/worker_generate": GenerateRequest,
    "/api/worker_generate_stream": GenerateRequest,
    "/api/count_token": CountTokenRequest,
}
# Fuzzed on their own: the scripted vLLM's model generates, so every embeddings request is refused (400), and in
# one schema with the generation routes they would take examples from them.
EMBEDDING_BODIES: dict[str, type[Any]] = {"/api/worker_get_embeddings": EmbeddingsRequest}


def worker_schema(bodies: dict[str, type[Any]] = GENERATION_BODIES) -> dict[str, Any]:
    """An OpenAPI document of the worker's FastChat routes, from the models their bodies are checked against."""
    components: dict[str, Any] = {}

    def body(model: type[Any]) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
        content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
        return {
            "post": {"requestBody": {"required": True, "content": content}, "responses": {"200": {"description": "ok"}}}
        }

    paths = {path: body(model) for path, model in bodies.items()}
    return {
        "openapi": "3.1.0",
        "info": {"title": "LLM Ops worker (FastChat routes)", "version": "1"},
        "paths": paths,
        "components": {"schemas": components},
    }


def openai_paths_schema(models: list[str] | None) -> dict[str, Any]:
    """An OpenAPI document of the worker's `/v1/completions` and `/v1/chat/completions` (what
    `/api/<model>/v1/...` reaches), from vLLM's own request models, which its routes validate bodies with.

    `models` None: vLLM's schemas as they are, for schema-violating requests (a narrower schema would call
    requests vLLM accepts "violating"). Else, for schema-valid requests, the same with `model` one of
    `models` (required) and the generation kept cheap: `max_tokens`, `max_completion_tokens` and `n` capped."""
    components: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for path, model in (("/v1/completions", CompletionRequest), ("/v1/chat/completions", ChatCompletionRequest)):
        schema = without_binary_format(model.model_json_schema(ref_template="#/components/schemas/{model}"))
        components.update(schema.pop("$defs", {}))
        properties = schema["properties"]
        if models is not None:
            properties["model"] = {"type": "string", "enum": models}
            for name in ("max_tokens", "max_completion_tokens"):
                if name in properties:
                    properties[name] = {"anyOf": [{"type": "integer", "maximum": CHEAP_TOKENS}, {"type": "null"}]}
            properties["n"] = {"type": "integer", "maximum": CHEAP_N}
            # Named, and a completion with a prompt, so that most cases reach generation (else nearly all
            # would be `{}`, which the router refuses for its lack of a model, vLLM for its lack of a prompt).
            schema["required"] = [*schema.get("required", []), "model", *(["prompt"] if "prompt" in properties else [])]
        components[model.__name__] = schema
        content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
        paths[path] = {
            "post": {"requestBody": {"required": True, "content": content}, "responses": {"200": {"description": "ok"}}}
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "vLLM's OpenAI routes on an LLM Ops worker", "version": "1"},
        "paths": paths,
        "components": {"schemas": components},
    }


def without_binary_format(schema: Any) -> Any:
    """`schema` with `"format": "binary"` (pydantic's `bytes`: `prompt_embeds`) dropped. Schemathesis cannot
    generate schema-violating values for it ("Unsupported type: 'Binary'"); from JSON, pydantic's `bytes`
    takes any string, which is what `{"type": "string"}` alone says."""
    if isinstance(schema, dict):
        return {
            key: without_binary_format(value) for key, value in schema.items() if (key, value) != ("format", "binary")
        }
    if isinstance(schema, list):
        return [without_binary_format(item) for item in schema]
    return schema


@contextlib.asynccontextmanager
async def worker_app(vllm: FakeVllm) -> AsyncIterator[tuple[FastAPI, FastAPI, dict[str, Any]]]:
    """(the app under test, its worker, the schema fuzzed): a worker over the scripted vLLM."""
    app = await fake_worker(vllm)
    yield app, app, worker_schema()


@contextlib.asynccontextmanager
async def worker_embeddings_app(vllm: FakeVllm) -> AsyncIterator[tuple[FastAPI, FastAPI, dict[str, Any]]]:
    """(the app under test, its worker, the schema fuzzed): FastChat's embeddings route of a worker."""
    app = await fake_worker(vllm)
    yield app, app, worker_schema(EMBEDDING_BODIES)


@contextlib.asynccontextmanager
async def openai_app(vllm: FakeVllm) -> AsyncIterator[tuple[FastAPI, FastAPI, dict[str, Any]]]:
    """(the app under test, its worker, the schema fuzzed): the router, in process, over a served controller
    and worker (tests/unit/routed.py)."""
    worker = fake_worker_to_serve(vllm)
    async with serving_router(in_process=True) as router:
        router.add("worker-a", worker, tuple(API_MODELS))
        await router.admitted("worker-a")
        yield router.app, worker, router.app.openapi()


@contextlib.asynccontextmanager
async def worker_openai_paths(vllm: FakeVllm) -> AsyncIterator[tuple[FastAPI, FastAPI, dict[str, Any]]]:
    """The worker, fuzzed at vLLM's OpenAI paths with schema-valid requests for the models it serves."""
    async with worker_app(vllm) as (app, worker, _):
        yield app, worker, openai_paths_schema(WORKER_MODELS)


@contextlib.asynccontextmanager
async def worker_openai_paths_as_vllm(vllm: FakeVllm) -> AsyncIterator[tuple[FastAPI, FastAPI, dict[str, Any]]]:
    """The worker, fuzzed at vLLM's OpenAI paths with requests that violate vLLM's own schemas."""
    async with worker_app(vllm) as (app, worker, _):
        yield app, worker, openai_paths_schema(None)


@contextlib.asynccontextmanager
async def openai_app_openai_paths(vllm: FakeVllm) -> AsyncIterator[tuple[FastAPI, FastAPI, dict[str, Any]]]:
    """The router, fuzzed at the same paths with schema-valid requests for the model its controller knows."""
    async with openai_app(vllm) as (api, worker, _):
        yield api, worker, openai_paths_schema(API_MODELS)


@dataclass
class Harness:
    """An app with its lifespan entered on an event loop in another thread, and what it was sent."""

    app: FastAPI
    portal: anyio.from_thread.BlockingPortal
    client: httpx.AsyncClient
    worker: httpx.AsyncClient  # the worker app itself (for the router: the one behind it)
    schema: dict[str, Any]
    vllm: FakeVllm
    sent: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def send(self, request: dict[str, Any]) -> httpx.Response:
        """One request, bounded by REQUEST_TIMEOUT; an exception the app raised fails the test."""
        self.sent += 1
        try:
            response: httpx.Response = self.portal.call(self._send, request)
        except TimeoutError:
            pytest.fail(f"no answer within {REQUEST_TIMEOUT} s (a hang)")
        except Exception as error:
            pytest.fail(f"the app raised {error!r}\n{''.join(traceback.format_exception(error)[-6:])}")
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        return response

    async def _send(self, request: dict[str, Any]) -> httpx.Response:
        with anyio.fail_after(REQUEST_TIMEOUT):
            response: httpx.Response = await self.client.request(**request)
            return response

    def assert_nothing_in_flight(self) -> None:
        status = self.portal.call(self.worker.post, "/api/worker_get_status")
        assert status.status_code == 200
        assert status.json()["queue_length"] == 0, "the worker still counts a request in flight"
        running = self.vllm.get_num_unfinished_requests()
        assert running == 0, f"{running} generations still running in vLLM"


@contextlib.contextmanager
def running(apps: Apps) -> Iterator[Harness]:
    # No delay between words: every generation finishes at once; room for any max_new_tokens the schema allows.
    vllm = FakeVllm(max_model_len=2 * MAX_NEW_TOKENS)

    @contextlib.asynccontextmanager
    async def clients() -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, httpx.AsyncClient, dict[str, Any]]]:
        async with (
            apps(vllm) as (app, worker, schema),
            asgi_client(app, "http://app") as client,
            asgi_client(worker) as direct,
        ):
            yield app, client, direct, schema

    with (
        anyio.from_thread.start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(clients()) as (app, client, direct, schema),
    ):
        harness = Harness(app, portal, client, direct, schema, vllm)
        yield harness
        harness.assert_nothing_in_flight()


def generated_requests(
    openapi: dict[str, Any], mode: GenerationMode, models: list[str], surrogates: bool = False
) -> st.SearchStrategy[Any]:
    """(case, httpx arguments) for requests generated from the schema. Half of those that name a
    model (as a string) name a served one, or nearly all would stop at "unknown model" before reaching the
    prompt and the engine; half of those with a `generation_mode` get the fields that mode needs (`aim_at_mode`).
    Surrogates go into the serialized body: schemathesis cannot revalidate them."""
    schema = schemathesis.openapi.from_dict(openapi)

    @st.composite
    def aimed(draw: st.DrawFn) -> tuple[Any, dict[str, Any]]:
        case = draw(schema.as_strategy(mode))
        if isinstance(case.body, dict):
            for name in ("model_identifier", "model"):
                if isinstance(case.body.get(name), str) and draw(st.booleans()):
                    case.body[name] = draw(st.sampled_from(models))
            if mode == GenerationMode.POSITIVE and case.body.get("generation_mode") and draw(st.booleans()):
                aim_at_mode(case.body, draw)
        request = case.as_transport_kwargs(base_url="http://app")
        if surrogates and "json" in request:
            request["json"] = with_lone_surrogates(draw, request["json"])
        return case, as_httpx(request)

    return aimed()


def aim_at_mode(body: dict[str, Any], draw: st.DrawFn) -> None:
    """`body` with the fields its `generation_mode` needs and without the other mode's. The schema cannot say
    which fields go together: without this, whether any generated request reaches the engine depends on which
    constants Hypothesis finds in the modules loaded before (it mixes them into what it draws)."""
    text = draw(st.text(max_size=20))
    if body["generation_mode"] == "chat":
        body.pop("prompt", None)
        body["messages"] = [{"role": "user", "text": text}]
    else:
        body.pop("messages", None)
        body.pop("system_message", None)
        body["prompt"] = text


def with_lone_surrogates(draw: st.DrawFn, body: Any) -> Any:
    """`body` with a lone surrogate inserted into its first string and maybe into others."""
    inserted = False

    def walk(value: Any) -> Any:
        nonlocal inserted
        if isinstance(value, str) and (not inserted or draw(st.booleans())):
            inserted = True
            at = draw(st.integers(0, len(value)))
            return value[:at] + chr(draw(st.integers(0xD800, 0xDFFF))) + value[at:]
        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    return walk(body)


def as_httpx(request: dict[str, Any]) -> dict[str, Any]:
    """Schemathesis serializes a case for `requests`. JSON bodies are sent as `json.dumps` writes them
    (ASCII: lone surrogates go as `\\udXXX` escapes, which httpx's own JSON encoding cannot write)."""
    request.pop("cookies", None)  # the schemas declare none
    if "json" in request:
        request["content"] = json.dumps(request.pop("json")).encode()
    elif isinstance(request.get("data"), bytes | str):
        request["content"] = request.pop("data")
    return request


def fuzz(
    apps: Apps,
    mode: GenerationMode,
    models: list[str],
    examples: int,
    check: Callable[..., None],
    *,
    surrogates: bool = False,
    discard: Callable[[dict[str, Any]], bool] | None = None,
) -> Harness:
    with running(apps) as harness:

        @settings(
            max_examples=examples,
            deadline=None,  # each request has REQUEST_TIMEOUT instead; a slow machine must not fail the run
            database=None,  # failures are reproduced from the printed request or @reproduce_failure blob
            derandomize=True,  # the same requests every run: a test whose verdict depends on luck is no test
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
            phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no explain phase: it traces, and is slow
            print_blob=True,
        )
        @given(generated=generated_requests(harness.schema, mode, models, surrogates))
        def run(generated: tuple[Any, dict[str, Any]]) -> None:
            case, request = generated
            if discard is not None:
                assume(not discard(request))
            note(f"{request['method']} {request['url']} {request.get('content')!r}")
            response = harness.send(request)
            case.validate_response(response, checks=[not_a_server_error])
            check(response)
            if mode == GenerationMode.NEGATIVE:
                assert 400 <= response.status_code < 500, f"a schema-violating request got {response.status_code}"
            harness.assert_nothing_in_flight()

        run()
    assert harness.sent >= examples, f"only {harness.sent} requests were sent"
    return harness


def json_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        pytest.fail(f"a {response.status_code} answer that is not JSON: {response.text[:200]!r}")


def check_worker_response(response: httpx.Response) -> None:
    if response.status_code >= 400:
        error = json_of(response)
        assert isinstance(error, dict) and set(error) == {"text", "error_code"}, f"not FastChat's error shape: {error}"
        assert isinstance(error["text"], str) and error["text"], error
        assert type(error["error_code"]) is int and error["error_code"] in WORKER_ERROR_CODES, error
    elif response.url.path == "/api/worker_generate_stream":
        chunks = [json.loads(chunk) for chunk in response.content.split(DELIMITER) if chunk]
        assert chunks, "an empty stream"
        assert all(chunk["error_code"] == 0 for chunk in chunks), f"a stream that ended in an error: {chunks[-1]}"
    elif response.url.path == "/api/worker_generate":
        assert json_of(response)["error_code"] == 0


def check_openai_error(error: Any, status: int) -> None:
    assert isinstance(error, dict) and set(error) == {"error"}, f"not OpenAI's error shape: {error}"
    detail = error["error"]
    assert isinstance(detail, dict) and set(detail) == set(OPENAI_ERROR_FIELDS), f"not OpenAI's error shape: {error}"
    for name, kind in OPENAI_ERROR_FIELDS.items():
        assert isinstance(detail[name], kind), f"error.{name} is {detail[name]!r}"
    assert detail["message"], "an error without a message"
    assert detail["code"] == status, error


def check_openai_response(response: httpx.Response) -> None:
    if response.status_code >= 400:
        check_openai_error(json_of(response), response.status_code)
    elif response.headers.get("content-type", "").startswith("text/event-stream"):
        events = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
        assert events and events[-1] == "[DONE]", f"a stream that does not end with [DONE]: {events[-3:]}"
        for data in map(json.loads, events[:-1]):
            if "error" in data:
                check_openai_error(data, 500)
                pytest.fail(f"a stream that ended in an error: {data}")


def test_worker_api_never_answers_5xx_or_a_malformed_error_to_schema_valid_requests() -> None:
    harness = fuzz(worker_app, GenerationMode.POSITIVE, WORKER_MODELS, POSITIVE, check_worker_response)
    assert harness.vllm.finished, "no generated request was answered by vLLM"


def not_violating_for_the_worker(request: dict[str, Any]) -> bool:
    """Whether a request generated to violate the worker's schema is one its request models accept after all
    (schemathesis' negative mode sometimes yields a body its mutation left valid)."""
    content = request.get("content", b"")
    try:
        if request["url"].endswith("/count_token"):
            CountTokenRequest.model_validate_json(content)
        elif request["url"].endswith("/worker_get_embeddings"):
            EmbeddingsRequest.model_validate_json(content)
        else:
            GENERATE_BODY.validate_json(content)
    except ValidationError:
        return False
    return True


def test_worker_api_refuses_schema_violating_requests_with_fastchat_errors_never_5xx() -> None:
    fuzz(
        worker_app, GenerationMode.NEGATIVE, WORKER_MODELS, NEGATIVE, check_worker_response,
        discard=not_violating_for_the_worker,
    )  # fmt: skip


def test_worker_api_never_answers_5xx_to_strings_with_lone_surrogates() -> None:
    fuzz(worker_app, GenerationMode.POSITIVE, WORKER_MODELS, SURROGATES, check_worker_response, surrogates=True)


def test_worker_embeddings_route_answers_fastchat_errors_never_5xx_valid_or_not() -> None:
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        discard = not_violating_for_the_worker if mode == GenerationMode.NEGATIVE else None
        fuzz(worker_embeddings_app, mode, WORKER_MODELS, NEGATIVE, check_worker_response, discard=discard)


def check_router_response(response: httpx.Response) -> None:
    """The error shape of the path: FastChat's on a model's FastChat routes (/api/<model>/...), OpenAI's elsewhere."""
    if is_fastchat_path(response.url.path):
        check_worker_response(response)
    else:
        check_openai_response(response)


def test_the_router_never_answers_5xx_or_a_malformed_error_to_schema_valid_requests() -> None:
    fuzz(openai_app, GenerationMode.POSITIVE, API_MODELS, POSITIVE, check_router_response)


def check_generation_response(response: httpx.Response) -> None:
    """`check_openai_response`, and a whole answer is a completion (its `choices`), not some other document."""
    check_openai_response(response)
    content_type = response.headers.get("content-type", "")
    if response.status_code == 200 and content_type.startswith("application/json"):
        answer = json_of(response)
        assert isinstance(answer, dict) and isinstance(answer.get("choices"), list), f"not a completion: {answer}"


def test_worker_openai_paths_never_answer_5xx_or_a_malformed_error_to_schema_valid_requests() -> None:
    harness = fuzz(
        worker_openai_paths, GenerationMode.POSITIVE, WORKER_MODELS, OPENAI_POSITIVE, check_generation_response
    )
    assert harness.vllm.finished, "no generated request was answered by vLLM"


def not_violating_for_vllm(request: dict[str, Any]) -> bool:
    """Whether a request generated to violate vLLM's JSON Schema is one vLLM's request class does not
    refuse, so it cannot be expected to get a 4xx: one that pydantic's lax mode accepts (`"1"` for 1, `0` for
    false: the JSON Schema is stricter than the validation), or one that makes the class raise outright.
    The latter are vLLM's bugs, not LLM Ops': its validators assume shapes they have not checked yet
    (`check_structured_outputs_count` calls `.get` on a `structured_outputs` that is not an object, an
    AttributeError; `check_system_message_content_type` iterates what is not a list, a TypeError), and its
    server answers them with its generic error handler."""
    model = ChatCompletionRequest if request["url"].endswith("/chat/completions") else CompletionRequest
    try:
        model.model_validate_json(request.get("content", b""))
    except (ValidationError, VLLMError):
        return False
    except (AttributeError, TypeError):
        return True
    return True


def test_worker_openai_paths_refuse_requests_violating_vllms_schemas_with_a_4xx_in_openai_shape() -> None:
    apps, checks = worker_openai_paths_as_vllm, check_generation_response
    fuzz(apps, GenerationMode.NEGATIVE, WORKER_MODELS, OPENAI_NEGATIVE, checks, discard=not_violating_for_vllm)


def test_the_router_never_answers_5xx_or_a_malformed_error_to_schema_valid_completions_and_chats() -> None:
    harness = fuzz(
        openai_app_openai_paths, GenerationMode.POSITIVE, API_MODELS, OPENAI_ROUTED, check_generation_response
    )
    assert harness.vllm.finished, "no generated request reached vLLM through the router"
