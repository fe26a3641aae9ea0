"""Generation through the front door: Traefik over verified TLS, the worker, vLLM, the real model."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.integration.conftest import LONG_STORY, MODEL, Stack, chat, completion

pytestmark = pytest.mark.integration


def stream_chunks(client: httpx.Client, body: dict[str, Any]) -> list[tuple[float, dict[str, Any]]]:
    """(seconds since the request, chunk) for every chunk of a stream, as it arrives."""
    start = time.monotonic()
    chunks: list[tuple[float, dict[str, Any]]] = []
    buffer = b""
    with client.stream("POST", f"/api/{MODEL}/worker_generate_stream", json=body) as response:
        assert response.status_code == 200, response.read()
        for data in response.iter_raw():
            buffer += data
            *complete, buffer = buffer.split(b"\0")
            chunks += [(time.monotonic() - start, json.loads(chunk)) for chunk in complete if chunk]
    assert buffer == b""
    return chunks


def test_greedy_chat_knows_the_capital_of_france(client: httpx.Client) -> None:
    response = client.post(f"/api/{MODEL}/worker_generate", json=chat(max_new_tokens=32))
    assert response.status_code == 200
    answer = response.json()
    assert "Paris" in answer["text"]
    assert answer["error_code"] == 0
    assert answer["finish_reason"] == "stop"
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_completion_mode_continues_the_prompt_as_given(client: httpx.Client) -> None:
    answer = client.post(f"/api/{MODEL}/worker_generate", json=completion()).json()
    assert "Paris" in answer["text"]
    assert answer["usage"]["completion_tokens"] == 8
    assert answer["finish_reason"] == "length"


def test_stream_chunks_arrive_one_by_one_and_end_as_the_whole_answer(client: httpx.Client) -> None:
    chunks = stream_chunks(client, completion(max_new_tokens=24, prompt="Once upon a time"))
    whole = client.post(f"/api/{MODEL}/worker_generate", json=completion(max_new_tokens=24, prompt="Once upon a time"))
    assert len(chunks) == 24
    texts = [chunk["text"] for _, chunk in chunks]
    assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:], strict=False))
    assert texts[-1] == whole.json()["text"]
    assert [chunk["finish_reason"] for _, chunk in chunks].count("length") == 1
    first_at, last_at = chunks[0][0], chunks[-1][0]
    assert first_at < last_at / 2, f"first chunk at {first_at:.2f} s, last at {last_at:.2f} s: not streamed"


def test_streaming_and_non_streaming_give_the_same_greedy_chat_answer(client: httpx.Client) -> None:
    streamed = stream_chunks(client, chat(max_new_tokens=32))[-1][1]
    whole = client.post(f"/api/{MODEL}/worker_generate", json=chat(max_new_tokens=32)).json()
    assert streamed == whole


def test_echo_returns_the_prompt_followed_by_the_answer(client: httpx.Client) -> None:
    plain = client.post(f"/api/{MODEL}/worker_generate", json=completion()).json()["text"]
    echoed = client.post(f"/api/{MODEL}/worker_generate", json=completion(echo=True)).json()["text"]
    assert echoed == "The capital of France is" + plain
    assert not plain.startswith("The capital of France is")


def test_the_documented_example_renders_every_turn_and_the_system_message(client: httpx.Client) -> None:
    """The request from the product docs (roles user and ai, a system_message), echoed."""
    body = {
        "model_identifier": MODEL,
        "messages": [
            {"role": "user", "text": "Hellow!"},
            {"role": "ai", "text": "Hey! How can I help you today?"},
            {"role": "user", "text": "Tell me a short funny joke."},
        ],
        "system_message": "The following is a friendly conversation between a human and an AI.",
        "temperature": 0.7,
        "top_p": 0.9,
        "echo": True,
        "generation_mode": "chat",
        "max_new_tokens": 16,
    }
    response = client.post(f"/api/{MODEL}/worker_generate", json=body)
    assert response.status_code == 200
    text = response.json()["text"]
    assert text.startswith(
        "<|im_start|>system\nThe following is a friendly conversation between a human and an AI.<|im_end|>\n"
        "<|im_start|>user\nHellow!<|im_end|>\n"
        "<|im_start|>assistant\nHey! How can I help you today?<|im_end|>\n"
        "<|im_start|>user\nTell me a short funny joke.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_the_documented_streaming_completion_example_works(client: httpx.Client) -> None:
    body = {
        "model_identifier": MODEL,
        "prompt": "Hellow! Can you tell me a joke?",
        "system_message": "The following is a friendly conversation between a human and an AI.",
        "temperature": 0.7,
        "top_p": 0.9,
        "echo": False,
        "generation_mode": "completion",
        "max_new_tokens": 16,
    }
    chunks = stream_chunks(client, body)
    assert chunks and chunks[-1][1]["error_code"] == 0
    assert chunks[-1][1]["finish_reason"] in ("stop", "length")


def test_a_stop_string_ends_the_answer_before_it(client: httpx.Client) -> None:
    answer = client.post(f"/api/{MODEL}/worker_generate", json=chat(stop=" Paris", max_new_tokens=32)).json()
    assert answer["finish_reason"] == "stop"
    assert "Paris" not in answer["text"]
    assert answer["text"].startswith("The capital of France is")


def test_a_seeded_sampled_answer_repeats(client: httpx.Client) -> None:
    body = completion(temperature=1.0, seed=1234, max_new_tokens=12, prompt="My favourite colour is")
    first = client.post(f"/api/{MODEL}/worker_generate", json=body).json()["text"]
    second = client.post(f"/api/{MODEL}/worker_generate", json=body).json()["text"]
    assert first == second


@pytest.mark.parametrize("route", ["front door", "worker"])
def test_a_client_that_leaves_mid_stream_frees_its_engine_request_within_a_second(
    stack: Stack, route: str, record_property: Callable[[str, object], None]
) -> None:
    base = f"/api/{MODEL}" if route == "front door" else f"{stack.worker_url}/api"
    url = f"{base}/worker_generate_stream"
    with stack.client() as client:
        body = chat(messages=LONG_STORY, max_new_tokens=400)
        with client.stream("POST", url, json=body) as response:
            chunks = response.iter_raw()
            first = next(chunks)
            assert (stack.queue_length(), first.count(b"\0")) == (1, 1), first
        # leaving the `with` closes the connection mid-stream
    freed_after = stack.seconds_until_engines_idle(timeout=1.0)
    record_property("engine_request_freed_after_s", round(freed_after, 3))
    stack.wait_until_idle(5, "the worker to stop counting the abandoned request")
    with stack.client() as client:
        answer = client.post(f"/api/{MODEL}/worker_generate", json=chat(max_new_tokens=32)).json()
    assert "Paris" in answer["text"]


@pytest.mark.parametrize("route", ["front door", "worker"])
def test_a_client_that_leaves_a_non_streaming_request_frees_its_engine_request_within_a_second(
    stack: Stack, route: str, record_property: Callable[[str, object], None]
) -> None:
    base = f"/api/{MODEL}" if route == "front door" else f"{stack.worker_url}/api"
    body = chat(messages=LONG_STORY, max_new_tokens=400)  # about 20 s of generation
    with stack.client(timeout=1.5) as client, pytest.raises(httpx.ReadTimeout):
        client.post(f"{base}/worker_generate", json=body)
    freed_after = stack.seconds_until_engines_idle(timeout=1.0)
    record_property("engine_request_freed_after_s", round(freed_after, 3))
    stack.wait_until_idle(5, "the worker to stop counting the abandoned request")
