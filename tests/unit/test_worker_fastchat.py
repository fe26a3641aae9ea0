"""FastChat's worker protocol over vLLM's serving handlers (a scripted stand-in): wire format, the
mapping to vLLM's requests, errors, and the helper routes."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastchat.conversation import Conversation, SeparatorStyle
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.serve.engine.protocol import ErrorInfo, ErrorResponse

from llm_ops.protocol.errors import ErrorCode
from llm_ops.protocol.framing import iter_chunks
from llm_ops.protocol.worker import GenerateRequest
from llm_ops.worker.fastchat import fastchat_error, openai_body
from llm_ops.worker.state import WorkerState
from tests.unit.fake_vllm import FakeVllm, asgi_client, chat, completion, context_overflow, fake_worker, worker_state

pytestmark = pytest.mark.anyio
CHATML_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
)


async def stream_chunks(client: httpx.AsyncClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    async with client.stream("POST", "/api/worker_generate_stream", json=body) as response:
        assert response.status_code == 200
        return [json.loads(chunk) async for chunk in iter_chunks(response.aiter_bytes())]


async def test_a_chat_answers_with_the_whole_text_usage_and_finish_reason(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/worker_generate", json=chat())
    assert response.status_code == 200
    assert response.json() == {
        "text": "The capital is Paris.",
        "error_code": 0,
        "usage": {"prompt_tokens": 14, "completion_tokens": 5, "total_tokens": 19},
        "finish_reason": "stop",
    }


async def test_a_completion_answers_with_the_whole_text(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/worker_generate", json=completion())
    assert response.json()["text"] == "The capital is Paris."
    assert response.json()["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}


async def test_an_answer_cut_by_max_new_tokens_finishes_with_length(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/worker_generate", json=chat(max_new_tokens=2))
    assert response.json()["text"] == "The capital" and response.json()["finish_reason"] == "length"


@pytest.mark.parametrize("body", [chat(), completion()], ids=["chat", "completion"])
async def test_a_stream_sends_the_text_so_far_in_nul_delimited_json_chunks(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    chunks = await stream_chunks(client, body)
    assert [chunk["text"] for chunk in chunks] == [
        "The",
        "The capital",
        "The capital is",
        "The capital is Paris",
        "The capital is Paris.",
    ]
    assert [chunk["finish_reason"] for chunk in chunks] == [None, None, None, None, "stop"]
    assert [chunk["usage"]["completion_tokens"] for chunk in chunks] == [1, 2, 3, 4, 5]
    assert {chunk["error_code"] for chunk in chunks} == {0}


async def test_a_delta_stream_sends_only_the_new_text_of_each_chunk(client: httpx.AsyncClient) -> None:
    chunks = await stream_chunks(client, chat(stream_text="delta"))
    assert [chunk["text"] for chunk in chunks] == ["The", " capital", " is", " Paris", "."]


async def test_a_chat_with_echo_puts_the_rendered_prompt_before_the_answer(client: httpx.AsyncClient) -> None:
    whole = (await client.post("/api/worker_generate", json=chat(echo=True))).json()["text"]
    streamed = await stream_chunks(client, chat(echo=True))
    assert whole == streamed[-1]["text"] == CHATML_PROMPT + "The capital is Paris."
    assert streamed[0]["text"] == CHATML_PROMPT + "The"


async def test_a_delta_stream_with_echo_sends_the_prompt_with_the_first_delta(client: httpx.AsyncClient) -> None:
    deltas = await stream_chunks(client, chat(echo=True, stream_text="delta"))
    assert deltas[0]["text"] == CHATML_PROMPT + "The"
    assert [chunk["text"] for chunk in deltas[1:]] == [" capital", " is", " Paris", "."]


async def test_a_completion_with_echo_is_echoed_by_vllm(client: httpx.AsyncClient, vllm: FakeVllm) -> None:
    whole = (await client.post("/api/worker_generate", json=completion(echo=True))).json()["text"]
    streamed = await stream_chunks(client, completion(echo=True))
    assert whole == streamed[-1]["text"] == "Once upon" + "The capital is Paris."
    assert all(isinstance(request, CompletionRequest) and request.echo for request in vllm.requests)


async def test_any_served_name_is_a_valid_model_identifier(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/worker_generate", json=chat(model_identifier="fake.model-1.5"))
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "code", "says"),
    [
        (chat(messages=None), 400, 40001, "messages"),
        (chat(messages=[{"role": "robot", "text": "x"}]), 400, 40001, "messages.0.role"),
        (chat(messages=[{"role": "ai", "text": "x"}]), 400, 40001, "alternate user and ai turns"),
        (chat(temperature="hot"), 400, 40001, "temperature"),
        (chat(temperature=-1), 400, 40302, "temperature"),
        (chat(top_p=0), 400, 40302, "top_p"),
        (chat(top_p=1.01), 400, 40302, "top_p"),
        (chat(max_new_tokens=0), 400, 40302, "max_new_tokens"),
        (chat(max_new_tokens=10_000), 400, 40303, "maximum context length"),
        (chat(model_identifier="gpt-4"), 404, 40301, "not model_identifier 'gpt-4'"),
        ({"generation_mode": "completion"}, 400, 40001, "model_identifier"),
        (completion(prompt=None), 400, 40001, "completion mode needs a `prompt` string"),
    ],
)
@pytest.mark.parametrize("endpoint", ["worker_generate", "worker_generate_stream"])
async def test_invalid_requests_get_a_fastchat_error_that_names_the_field(
    client: httpx.AsyncClient, endpoint: str, body: dict[str, Any], status: int, code: int, says: str
) -> None:
    response = await client.post(f"/api/{endpoint}", json=body)
    assert response.status_code == status
    assert response.json()["error_code"] == code
    assert says in response.json()["text"]


async def test_a_fastchat_error_reads_as_a_sentence(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/worker_generate", json=chat(top_p=2))
    assert response.json() == {
        "text": "invalid request: top_p: Input should be less than or equal to 1",
        "error_code": 40302,
    }


@pytest.mark.parametrize("raw", [b'{"model_identifier": ', b"", b"[]", b"null", b"\x80"])
async def test_a_body_that_is_not_a_json_object_gets_a_validation_error(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post("/api/worker_generate", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error_code"] == 40001


async def test_a_refused_request_never_reaches_vllm(client: httpx.AsyncClient, vllm: FakeVllm) -> None:
    await client.post("/api/worker_generate", json=chat(top_p=2))
    await client.post("/api/worker_generate_stream", json=chat(model_identifier="gpt-4"))
    assert vllm.requests == []


@pytest.mark.parametrize(
    ("status", "message", "code"),
    [
        (400, "This model's maximum context length is 512 tokens. However, ...", ErrorCode.CONTEXT_OVERFLOW),
        (404, "The model `x` does not exist.", ErrorCode.INVALID_MODEL),
        (429, "too many requests", ErrorCode.ENGINE_OVERLOADED),
        (503, "the engine is sleeping", ErrorCode.ENGINE_OVERLOADED),
        (400, "temperature must be non-negative", ErrorCode.PARAM_OUT_OF_RANGE),
        (500, "the engine core died", ErrorCode.INTERNAL_ERROR),
    ],
)
def test_vllm_refusals_map_to_the_fastchat_error_code_that_means_the_same(
    status: int, message: str, code: ErrorCode
) -> None:
    error = fastchat_error(status, message)
    assert (error.code, error.status_code, error.message) == (code, status, message)


@pytest.mark.parametrize("endpoint", ["worker_generate", "worker_generate_stream"])
async def test_an_error_response_of_vllm_becomes_a_fastchat_error_with_vllms_status(
    client: httpx.AsyncClient, vllm: FakeVllm, endpoint: str
) -> None:
    vllm.error = ErrorResponse(error=ErrorInfo(message="the engine is sleeping", type="ServiceUnavailable", code=503))
    response = await client.post(f"/api/{endpoint}", json=chat())
    assert response.status_code == 503
    assert response.json() == {"text": "the engine is sleeping", "error_code": 42903}


async def test_a_context_overflow_of_vllm_is_fastchats_context_overflow(
    client: httpx.AsyncClient, vllm: FakeVllm
) -> None:
    vllm.error = context_overflow(512, 600, 16)
    response = await client.post("/api/worker_generate", json=completion())
    assert response.status_code == 400 and response.json()["error_code"] == 40303


async def test_an_engine_failure_mid_stream_ends_the_stream_with_an_error_chunk(
    client: httpx.AsyncClient, vllm: FakeVllm
) -> None:
    vllm.fail_after = 2
    chunks = await stream_chunks(client, chat())
    assert [chunk["text"] for chunk in chunks[:2]] == ["The", "The capital"]
    assert chunks[-1]["error_code"] == 50001 and chunks[-1]["finish_reason"] == "error"
    assert "simulated engine failure" in chunks[-1]["text"]


async def test_the_status_reports_the_served_names_and_nothing_queued(client: httpx.AsyncClient) -> None:
    status = (await client.post("/api/worker_get_status")).json()
    assert status == {"model_names": ["fake-model", "fake.model-1.5"], "speed": 1, "queue_length": 0}


async def test_count_token_and_model_details_answer_like_fastchat_workers(client: httpx.AsyncClient) -> None:
    count = await client.post("/api/count_token", json={"prompt": "one two three"})
    with_model = await client.post("/api/count_token", json={"model": "fake-model", "prompt": "one two"})
    assert count.json() == {"count": 3, "error_code": 0} and with_model.json() == {"count": 2, "error_code": 0}
    assert (await client.post("/api/model_details")).json() == {"context_length": 512}


async def test_count_token_refuses_a_body_without_a_prompt(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/count_token", json={"text": "one"})
    assert response.status_code == 400 and response.json()["error_code"] == 40001
    assert "prompt" in response.json()["text"]


async def test_fastchat_can_rebuild_the_conversation_template_and_render_the_prompt_vllm_renders(
    client: httpx.AsyncClient,
) -> None:
    conv = (await client.post("/api/worker_get_conv_template", json={"model": "fake-model"})).json()["conv"]
    assert conv["name"] == "chatml"  # matched from the tokenizer's chat template
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
    assert rebuilt.get_prompt() == CHATML_PROMPT


async def test_a_chat_template_that_no_conversation_renders_has_no_conv_template() -> None:
    app = await fake_worker(FakeVllm(chat_template="{% for m in messages %}{{ m['content'] }}|{% endfor %}"))
    async with asgi_client(app) as client:
        response = await client.post("/api/worker_get_conv_template")
    assert response.json() == {"conv": None}


def fastchat_body(**fields: Any) -> dict[str, Any]:
    """What FastChat's OpenAI-compatible server sends a worker (get_gen_params in fastchat 0.2.36)."""
    body: dict[str, Any] = {
        "model": "fake-model",
        "prompt": CHATML_PROMPT,
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
    client: httpx.AsyncClient, vllm: FakeVllm
) -> None:
    response = await client.post("/api/worker_generate", json=fastchat_body())
    assert response.status_code == 200 and response.json()["text"] == "The capital is Paris."
    (request,) = vllm.requests
    assert isinstance(request, CompletionRequest)
    assert (request.prompt, request.temperature, request.max_tokens, request.stop) == (
        CHATML_PROMPT,
        0.7,
        16,
        ["<|im_end|>"],
    )


async def test_fastchat_bodies_echo_the_prompt_unless_told_not_to(client: httpx.AsyncClient) -> None:
    body = fastchat_body()
    del body["echo"]
    response = await client.post("/api/worker_generate", json=body)
    assert response.json()["text"] == CHATML_PROMPT + "The capital is Paris."


async def test_fastchat_bodies_are_checked_and_errors_name_the_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/worker_generate_stream", json=fastchat_body(top_p=2))
    assert response.status_code == 400
    assert response.json() == {
        "text": "invalid request: top_p: Input should be less than or equal to 1",
        "error_code": 40302,
    }


# openai_body: what vLLM is asked for a FastChat request, one family of fields at a time.


def mapped(body: dict[str, Any], worker: WorkerState | None = None, stream: bool = False) -> dict[str, Any]:
    return openai_body(GenerateRequest.model_validate(body), worker or worker_state(), stream)


def test_openai_body_turns_a_chat_into_openai_messages_with_the_system_message_first() -> None:
    body = mapped(chat(system_message="Be brief.", messages=[{"role": "human", "text": "Hi"}]))
    assert body["model"] == "fake-model"
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert "prompt" not in body and "echo" not in body  # vLLM's chat echo is not FastChat's: the worker adds it
    ChatCompletionRequest.model_validate(body)


def test_openai_body_sends_a_completion_prompt_as_is_with_echo() -> None:
    body = mapped(completion(prompt="  raw text", echo=True))
    assert (body["prompt"], body["echo"]) == ("  raw text", True)
    assert "messages" not in body
    CompletionRequest.model_validate(body)


def test_openai_body_maps_max_new_tokens_to_each_apis_length_field() -> None:
    assert mapped(chat(max_new_tokens=7))["max_completion_tokens"] == 7
    assert mapped(completion(max_new_tokens=7))["max_tokens"] == 7


def test_openai_body_passes_the_sampling_fields_on_unchanged() -> None:
    fields = {"temperature": 0.3, "top_p": 0.5, "top_k": 5, "seed": 7}
    body = mapped(chat(**fields))
    assert {name: body[name] for name in fields} == fields


def test_openai_body_passes_the_penalties_on_unchanged() -> None:
    fields = {"repetition_penalty": 1.2, "presence_penalty": 0.5, "frequency_penalty": -0.5}
    body = mapped(completion(**fields))
    assert {name: body[name] for name in fields} == fields


def test_openai_body_adds_the_conversation_templates_stops_to_chats_only() -> None:
    worker = worker_state(stop=["<|im_end|>"], stop_token_ids=[2])
    chat_body = mapped(chat(stop="END", stop_token_ids=[9]), worker)
    completion_body = mapped(completion(stop=["END", "\n"], stop_token_ids=[9]), worker)
    assert (chat_body["stop"], chat_body["stop_token_ids"]) == (["END", "<|im_end|>"], [9, 2])
    assert (completion_body["stop"], completion_body["stop_token_ids"]) == (["END", "\n"], [9])


def test_openai_body_asks_a_stream_for_usage_on_every_event() -> None:
    assert mapped(chat(), stream=True)["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    whole = mapped(chat(), stream=False)
    assert whole["stream"] is False and "stream_options" not in whole


async def test_the_sampling_fields_reach_vllms_chat_request(client: httpx.AsyncClient, vllm: FakeVllm) -> None:
    body = chat(temperature=0, top_p=0.5, top_k=5, seed=7, stop="END", stop_token_ids=[9], max_new_tokens=2)
    await client.post("/api/worker_generate", json=body)
    (request,) = vllm.requests
    assert isinstance(request, ChatCompletionRequest)
    assert (request.temperature, request.top_p, request.top_k, request.seed) == (0, 0.5, 5, 7)
    assert (request.max_completion_tokens, request.stop, request.stop_token_ids) == (2, ["END"], [9])


async def test_a_conv_template_flag_adds_its_stop_strings_to_chats(vllm: FakeVllm) -> None:
    app = await fake_worker(vllm, flags=["--conv-template", "chatml"])
    async with asgi_client(app) as client:
        await client.post("/api/worker_generate", json=chat())
    (request,) = vllm.requests
    assert isinstance(request, ChatCompletionRequest) and request.stop == ["<|im_end|>"]


@pytest.mark.parametrize("endpoint", ["worker_generate", "worker_generate_stream"])
async def test_an_empty_completion_prompt_is_refused_with_a_fastchat_error(
    client: httpx.AsyncClient, endpoint: str
) -> None:
    response = await client.post(f"/api/{endpoint}", json=completion(prompt=""))
    assert response.status_code == 400 and response.json()["error_code"] in (40001, 40302)


async def test_a_model_that_does_not_generate_text_refuses_fastchat_generation_with_a_sentence(
    vllm: FakeVllm,
) -> None:
    app = await fake_worker(vllm)
    del app.state.openai_serving_chat, app.state.openai_serving_completion  # vLLM sets none for an embedding model
    async with asgi_client(app) as client:
        for body in (chat(), completion()):
            response = await client.post("/api/worker_generate", json=body)
            assert response.status_code == 400 and "is an embedding model: it does not generate text" in response.text
    assert vllm.requests == []


async def test_a_text_generation_model_refuses_embeddings_with_a_sentence_on_both_apis(vllm: FakeVllm) -> None:
    app = await fake_worker(vllm)
    async with asgi_client(app) as client:
        fastchat = await client.post("/api/worker_get_embeddings", json={"input": ["x"]})
        openai = await client.post("/v1/embeddings", json={"model": "fake-model", "input": "x"})
    assert fastchat.status_code == 400 and "generates text, it does not embed it" in fastchat.json()["text"]
    assert openai.status_code == 400 and "is a text generation model" in openai.json()["error"]["message"]
    assert vllm.requests == []


async def test_an_embeddings_request_without_input_is_refused_before_the_engine(vllm: FakeVllm) -> None:
    app = await fake_worker(vllm)
    async with asgi_client(app) as client:
        response = await client.post("/api/worker_get_embeddings", json={"input": [], "model": "fake-model"})
    assert response.status_code == 400 and response.json()["error_code"] == 40001 and "input" in response.json()["text"]
