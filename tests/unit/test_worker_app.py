"""The worker's HTTP layer over a scripted engine: wire format, errors, and no leaked slots."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastchat.conversation import Conversation, SeparatorStyle

from llm_ops.prompts.build import TokenizerChatTemplateRenderer
from llm_ops.protocol.framing import iter_chunks
from llm_ops.worker.app import create_worker_app
from llm_ops.worker.service import WorkerService
from tests.unit.fake_engine import FakeEngine, open_fake_service

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
async def client(engine: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    app = create_worker_app(lambda: open_fake_service(engine))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


def chat(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model_identifier": "fake-model",
        "generation_mode": "chat",
        "messages": [{"role": "user", "text": "What is the capital of France?"}],
    }
    return body | fields


async def queue_length(client: httpx.AsyncClient) -> int:
    return (await client.post("/api/worker_get_status")).json()["queue_length"]


async def test_generate_returns_the_final_chunk_as_json(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/worker_generate", json=chat())
    assert response.status_code == 200
    assert response.json() == {
        "text": "The capital is Paris.",
        "error_code": 0,
        "usage": {"prompt_tokens": 14, "completion_tokens": 5, "total_tokens": 19},
        "finish_reason": "stop",
    }


async def test_stream_sends_cumulative_text_in_nul_delimited_json_chunks(client: httpx.AsyncClient) -> None:
    async with client.stream("POST", "/api/worker_generate_stream", json=chat()) as response:
        assert response.status_code == 200
        chunks = [json.loads(chunk) async for chunk in iter_chunks(response.aiter_bytes())]
    assert [chunk["text"] for chunk in chunks] == [
        "The",
        "The capital",
        "The capital is",
        "The capital is Paris",
        "The capital is Paris.",
    ]
    assert [chunk["finish_reason"] for chunk in chunks] == [None, None, None, None, "stop"]
    assert [chunk["usage"]["completion_tokens"] for chunk in chunks] == [1, 2, 3, 4, 5]


async def stream_texts(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[list[str], int]:
    """The chunks' texts and the bytes the stream took."""
    async with client.stream("POST", "/api/worker_generate_stream", json=body) as response:
        raw = await response.aread()
    return [json.loads(chunk)["text"] for chunk in raw.split(b"\0") if chunk], len(raw)


async def test_a_delta_stream_sends_only_the_new_text_of_each_chunk(client: httpx.AsyncClient) -> None:
    texts, _ = await stream_texts(client, chat(stream_text="delta"))
    assert texts == ["The", " capital", " is", " Paris", "."]


async def test_a_delta_stream_with_echo_sends_the_prompt_with_the_first_delta(client: httpx.AsyncClient) -> None:
    texts, _ = await stream_texts(client, chat(stream_text="delta", echo=True))
    assert texts[0].startswith("<|im_start|>system\n") and texts[0].endswith("<|im_start|>assistant\nThe")
    assert texts[1:] == [" capital", " is", " Paris", "."]


async def test_stream_text_does_not_change_the_whole_answer_of_worker_generate(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/worker_generate", json=chat(stream_text="delta"))
    assert response.json()["text"] == "The capital is Paris."


async def test_a_long_answer_costs_linear_bytes_as_deltas_and_quadratic_bytes_cumulative(engine: FakeEngine) -> None:
    engine.words, engine.max_model_len = [" word"] * 1000, 2048
    app = create_worker_app(lambda: open_fake_service(engine))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://worker") as client,
    ):
        delta_texts, delta_bytes = await stream_texts(client, chat(stream_text="delta", max_new_tokens=1000))
        cumulative_texts, cumulative_bytes = await stream_texts(client, chat(max_new_tokens=1000))
    assert "".join(delta_texts) == cumulative_texts[-1] == " word" * 1000
    assert delta_bytes < 150 * 1000  # about 125 bytes of JSON per chunk of one token
    assert cumulative_bytes > 5 * 1000 * 1000 / 2  # the text so far, 5 bytes a word, in each of 1000 chunks


async def test_echo_puts_the_rendered_prompt_before_the_answer(client: httpx.AsyncClient) -> None:
    text = (await client.post("/api/worker_generate", json=chat(echo=True))).json()["text"]
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nThe capital is Paris."
    )


async def test_any_served_name_is_a_valid_model_identifier(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/worker_generate", json=chat(model_identifier="fake.model-1.5"))
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "code", "says"),
    [
        (chat(messages=None), 400, 40001, "messages"),
        (chat(messages=[{"role": "robot", "text": "x"}]), 400, 40001, "messages.0.role"),
        (chat(temperature="hot"), 400, 40001, "temperature"),
        (chat(temperature=-1), 400, 40302, "temperature"),
        (chat(top_p=0), 400, 40302, "top_p"),
        (chat(top_p=1.01), 400, 40302, "top_p"),
        (chat(max_new_tokens=0), 400, 40302, "max_new_tokens"),
        (chat(max_new_tokens=10_000), 400, 40303, "context"),
        (chat(stop_token_ids=[1, 1000]), 400, 40302, "stop_token_ids: [1000] are not token ids of this model"),
        (chat(model_identifier="gpt-4"), 404, 40301, "'gpt-4'"),
        ({"generation_mode": "completion"}, 400, 40001, "model_identifier"),
    ],
)
@pytest.mark.parametrize("endpoint", ["worker_generate", "worker_generate_stream"])
async def test_invalid_requests_get_a_fastchat_error(
    client: httpx.AsyncClient, endpoint: str, body: dict[str, Any], status: int, code: int, says: str
) -> None:
    response = await client.post(f"/api/{endpoint}", json=body)
    assert response.status_code == status
    assert response.json()["error_code"] == code
    assert says in response.json()["text"]


@pytest.mark.parametrize(
    ("method", "path", "content", "status", "says"),
    [
        ("POST", "/api/worker_generate", b"\x80", 400, "not valid JSON text (UTF-8)"),
        ("POST", "/api/count_token", b"\x00" * 9, 400, "not valid JSON text (UTF-8)"),
        ("POST", "/api/nothing", b"{}", 404, "no such endpoint: POST /api/nothing"),
        ("GET", "/api/worker_generate", b"", 405, "does not take GET requests"),
    ],
)
async def test_bodies_that_are_not_text_and_unknown_routes_get_a_fastchat_error(
    client: httpx.AsyncClient, method: str, path: str, content: bytes, status: int, says: str
) -> None:
    headers = {"content-type": "application/json"}
    response = await client.request(method, path, content=content, headers=headers)
    assert response.status_code == status
    assert response.json()["error_code"] == 40001 and says in response.json()["text"]


@pytest.mark.parametrize("raw", [b'{"model_identifier": ', b"", b"[]", b"null"])
async def test_a_body_that_is_not_a_json_object_gets_a_validation_error(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post("/api/worker_generate", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error_code"] == 40001


async def test_a_prompt_longer_than_the_context_is_refused(client: httpx.AsyncClient) -> None:
    body = {"model_identifier": "fake-model", "generation_mode": "completion", "prompt": "word " * 64}
    response = await client.post("/api/worker_generate", json=body)
    assert response.status_code == 400
    assert response.json()["error_code"] == 40303


async def test_the_default_max_new_tokens_shrinks_to_the_room_left(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    body = {"model_identifier": "fake-model", "generation_mode": "completion", "prompt": "word " * 61}
    response = await client.post("/api/worker_generate", json=body)
    assert response.status_code == 200
    assert engine.seen_options[-1].max_tokens == 3


async def test_sampling_fields_and_template_stops_reach_the_engine(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    body = chat(temperature=0, top_p=0.5, top_k=5, seed=7, stop="END", stop_token_ids=[9], max_new_tokens=2)
    await client.post("/api/worker_generate", json=body)
    options = engine.seen_options[-1]
    assert (options.temperature, options.top_p, options.top_k, options.seed, options.max_tokens) == (0, 0.5, 5, 7, 2)
    assert options.stop == ("END", "<|im_end|>")
    assert options.stop_token_ids == (9,)


async def test_an_engine_failure_ends_with_an_error_and_frees_the_slot(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    engine.fail_after = 2
    response = await client.post("/api/worker_generate", json=chat())
    assert response.status_code == 500
    assert response.json()["error_code"] == 50001
    assert await queue_length(client) == 0


async def test_status_reports_the_served_names(client: httpx.AsyncClient) -> None:
    status = (await client.post("/api/worker_get_status")).json()
    assert status == {"model_names": ["fake-model", "fake.model-1.5"], "speed": 1, "queue_length": 0}


async def test_helper_endpoints_answer_like_fastchat_workers(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/count_token", json={"prompt": "one two three"})).json() == {
        "count": 3,
        "error_code": 0,
    }
    assert (await client.post("/api/model_details")).json() == {"context_length": 64}
    conv = (await client.post("/api/worker_get_conv_template")).json()["conv"]
    assert conv["name"] == "chatml"
    health = (await client.get("/health")).json()
    assert health == {"status": "ok", "running": 0, "waiting": 0, "engine_requests": 0}


async def test_a_base_model_without_a_chat_template_answers_completions_and_refuses_chats_clearly() -> None:
    engine = FakeEngine()
    base_model = WorkerService(engine, ["base-model"], TokenizerChatTemplateRenderer(engine.tokenizer()))
    app = create_worker_app(lambda: contextlib.nullcontext(base_model))  # type: ignore[arg-type, return-value]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
            chat_body = chat(model_identifier="base-model")
            refused = await client.post("/api/worker_generate", json=chat_body)
            completion = chat_body | {"generation_mode": "completion", "prompt": "Once", "messages": None}
            answered = await client.post("/api/worker_generate", json=completion)
    assert refused.status_code == 400
    assert refused.json()["error_code"] == 40001
    assert "this model has no chat template: use generation_mode 'completion'" in refused.json()["text"]
    assert answered.status_code == 200 and answered.json()["text"] == "The capital is Paris."


def fastchat_body(**fields: Any) -> dict[str, Any]:
    """What FastChat's OpenAI-compatible server sends a worker (get_gen_params in fastchat 0.2.36)."""
    body: dict[str, Any] = {
        "model": "fake-model",
        "prompt": "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "temperature": 0.7,
        "logprobs": None,
        "top_p": 1.0,
        "top_k": -1,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "max_new_tokens": 16,
        "echo": False,
        "stop_token_ids": [],
        "stop": ["<|im_end|>"],
    }
    return body | fields


async def test_fastchat_bodies_are_served_as_completions_of_their_rendered_prompt(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    response = await client.post("/api/worker_generate", json=fastchat_body())
    assert response.status_code == 200 and response.json()["text"] == "The capital is Paris."
    options = engine.seen_options[-1]
    assert (options.temperature, options.max_tokens, options.stop) == (0.7, 16, ("<|im_end|>",))


async def test_fastchat_bodies_echo_the_prompt_unless_told_not_to(client: httpx.AsyncClient) -> None:
    body = fastchat_body()
    del body["echo"]
    response = await client.post("/api/worker_generate", json=body)
    assert response.json()["text"] == body["prompt"] + "The capital is Paris."


async def test_fastchat_bodies_are_checked_and_errors_name_the_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/worker_generate_stream", json=fastchat_body(top_p=2))
    assert response.status_code == 400
    assert response.json() == {
        "text": "invalid request: top_p: Input should be less than or equal to 1",
        "error_code": 40302,
    }


async def test_fastchat_helper_calls_with_their_model_field_are_answered(client: httpx.AsyncClient) -> None:
    count = await client.post("/api/count_token", json={"model": "fake-model", "prompt": "one two"})
    assert count.json() == {"count": 2, "error_code": 0}


async def test_fastchat_can_rebuild_the_conversation_template_and_render_the_same_prompt(
    client: httpx.AsyncClient,
) -> None:
    conv = (await client.post("/api/worker_get_conv_template", json={"model": "fake-model"})).json()["conv"]
    rebuilt = Conversation(  # as fastchat.serve.openai_api_server.get_gen_params does
        name=conv["name"],
        system_template=conv["system_template"],
        system_message=conv["system_message"],
        roles=conv["roles"],
        messages=list(conv["messages"]),
        offset=conv["offset"],
        sep_style=SeparatorStyle(conv["sep_style"]),
        sep=conv["sep"],
        sep2=conv["sep2"],
        stop_str=conv["stop_str"],
        stop_token_ids=conv["stop_token_ids"],
    )
    rebuilt.append_message(rebuilt.roles[0], "What is the capital of France?")
    rebuilt.append_message(rebuilt.roles[1], None)
    ours = await client.post("/api/worker_generate", json=chat(echo=True, max_new_tokens=1))
    assert ours.json()["text"].startswith(rebuilt.get_prompt())
