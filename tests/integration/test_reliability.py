"""The worst minute, on the real stack: strangers without a key, oversized bodies, a storm of requests
that fail or are abandoned in every way, and a replica stopped for a deploy while it streams."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import answers, draining, wait_until
from tests.integration.conftest import (
    API_KEYS,
    CAPITAL_QUESTION,
    LONG_STORY,
    MODEL,
    RESTART_TIMEOUT,
    WORKER_CONCURRENCY,
    WORKER_QUEUE,
    Stack,
    chat,
    worker_processes,
)

pytestmark = pytest.mark.integration
WRONG_KEY = "sk-llm-ops-wrong-5555555555"


@pytest.mark.parametrize("headers", [{}, {"Authorization": f"Bearer {WRONG_KEY}"}], ids=["no key", "wrong key"])
def test_the_front_door_refuses_requests_without_a_valid_key(stack: Stack, headers: dict[str, str]) -> None:
    with stack.client(headers=headers) as client:
        worker = client.post(f"/api/{MODEL}/worker_generate", json=chat())
        status = client.post(f"/api/{MODEL}/worker_get_status")
        openai_chat = client.post("/v1/chat/completions", json={"model": MODEL, "messages": CAPITAL_QUESTION})
        models = client.get("/v1/models")
    for response in (worker, status):
        assert response.status_code == 401 and response.json()["error_code"] == 40101, response.text
    for response in (openai_chat, models):  # vLLM's error shape: the HTTP status as the code
        assert response.status_code == 401 and response.json()["error"]["code"] == 401
        assert "API key" in response.json()["error"]["message"]


def test_no_api_key_appears_in_any_log(stack: Stack) -> None:
    refused, answered = (f"key-not-logged-{outcome}-{uuid.uuid4().hex}" for outcome in ("refused", "answered"))
    wrong_key = {"Authorization": f"Bearer {WRONG_KEY}", "X-Request-Id": refused}
    with stack.client(headers=wrong_key) as client:
        assert client.post(f"/api/{MODEL}/worker_generate", json=chat()).status_code == 401
    with stack.client(headers=stack.headers | {"X-Request-Id": answered}) as client:
        assert client.post(f"/api/{MODEL}/worker_generate", json=chat(max_new_tokens=2)).status_code == 200
    # Traefik writes its access log asynchronously, and the servers' lines reach the stack's log through a pipe.
    wait_until(
        lambda: all(request_id in stack.access_log.read_text() for request_id in (refused, answered)),
        10,
        "both requests in Traefik's access log",
    )
    wait_until(lambda: answered in stack.log_file.read_text(), 10, "the answered request in the stack's log")
    logs = stack.log_file.read_text() + stack.access_log.read_text()
    assert f"/api/{MODEL}/worker_generate" in logs  # the requests were logged ...
    for key in (*API_KEYS, WRONG_KEY):
        assert key not in logs  # ... their keys were not


def test_a_body_over_the_limit_gets_413_through_the_front_door(stack: Stack) -> None:
    huge = chat(messages=[{"role": "user", "text": "word " * 300_000}])  # 1.5 MB, over the 1 MiB default
    with stack.client() as client:
        worker = client.post(f"/api/{MODEL}/worker_generate", json=huge)
        openai = client.post("/v1/completions", json={"model": MODEL, "prompt": "word " * 300_000})
    assert worker.status_code == 413 and worker.json()["error_code"] == 40302
    assert openai.status_code == 413 and "limit" in openai.json()["error"]["message"]


@pytest.mark.parametrize(
    "extreme",
    [
        {"seed": 2**63 - 1},
        {"seed": -(2**63)},
        {"temperature": 2.0, "top_p": 1e-9},
        {"top_k": 2**31 - 1},
        {"repetition_penalty": 10.0, "presence_penalty": -2.0, "frequency_penalty": 2.0},
        {"stop": ["x" * 1000] * 4},
        {"stop_token_ids": [49151] * 64},  # the last id of SmolLM2's vocabulary
    ],
    ids=lambda extreme: ",".join(extreme),
)
def test_the_real_engine_serves_values_at_every_bound(client: httpx.Client, extreme: dict[str, Any]) -> None:
    response = client.post(f"/api/{MODEL}/worker_generate", json=chat(max_new_tokens=4) | extreme)
    assert response.status_code == 200, response.text
    assert response.json()["finish_reason"] in ("stop", "length")


def test_a_stop_token_id_outside_the_vocabulary_is_refused_before_the_engine_sees_it(client: httpx.Client) -> None:
    response = client.post(f"/api/{MODEL}/worker_generate", json=chat(stop_token_ids=[49152]))
    assert response.status_code == 400 and response.json()["error_code"] == 40302, response.text
    assert "49152" in response.json()["text"]


def _end_one_way(client: httpx.Client, kind: str) -> str:
    """A request to the first replica that ends the way `kind` says; what happened."""
    url = "/api/worker_generate"
    short = chat(max_new_tokens=8)
    try:
        if kind == "success":
            return str(client.post(url, json=short).status_code)
        if kind == "invalid":
            return str(client.post(url, json=chat(top_p=7)).status_code)
        if kind == "too long":
            return str(client.post(url, json=chat(messages=[{"role": "user", "text": "word " * 9000}])).status_code)
        if kind == "stream success":
            with client.stream("POST", f"{url}_stream", json=short) as response:
                complete = response.status_code != 200 or response.read().endswith(b"\0")
                return str(response.status_code) + ("" if complete else " cut")
        if kind == "stream abandoned":
            with client.stream("POST", f"{url}_stream", json=chat(messages=LONG_STORY)) as response:
                for _ in response.iter_raw():
                    break
                return "abandoned" if response.status_code == 200 else str(response.status_code)
        if kind == "client timeout":  # abandons running and waiting requests alike
            client.post(url, json=chat(messages=LONG_STORY), timeout=random.uniform(0.05, 1.5))
            return "answered before the timeout"
    except httpx.TimeoutException:
        return "timed out"
    raise AssertionError(kind)


def test_a_storm_of_requests_ending_every_way_leaves_no_slot_or_engine_request_behind(
    stack: Stack, record_property: Callable[[str, object], None]
) -> None:
    kinds = ["success", "invalid", "too long", "stream success", "stream abandoned", "client timeout"]
    random.seed(5)
    plan = [kinds[n % len(kinds)] for n in range(240)]
    random.shuffle(plan)
    outcomes: list[str] = []
    at_once = (WORKER_CONCURRENCY + WORKER_QUEUE) * 2  # half of them over the worker's limits at any time

    def run(kinds: list[str]) -> None:
        with httpx.Client(base_url=stack.worker_url, headers=stack.headers, timeout=120) as client:
            for kind in kinds:
                outcomes.append(_end_one_way(client, kind))
                if outcomes[-1] == "429":  # load pacing: refusals are instant; without a pause they crowd out the rest
                    time.sleep(0.2)

    threads = [threading.Thread(target=run, args=(plan[n::at_once],)) for n in range(at_once)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    counted = {outcome: outcomes.count(outcome) for outcome in sorted(set(outcomes))}
    record_property("outcomes", json.dumps(counted))
    assert len(outcomes) == len(plan)
    assert {"200", "400", "429", "abandoned", "timed out"} <= set(counted), counted
    assert "200 cut" not in counted and not any(o.startswith("5") for o in counted), counted
    stack.wait_until_idle(10, "every slot to be freed after the storm")
    assert stack.engine_requests(stack.worker_url) == 0
    with httpx.Client(headers=stack.headers, timeout=120) as client:
        answer = client.post(f"{stack.worker_url}/api/worker_generate", json=chat(max_new_tokens=32)).json()
    assert "Paris" in answer["text"]


def test_overload_is_answered_at_once_with_429_42903_and_retry_after(stack: Stack) -> None:
    """Fill the first replica's running and waiting slots with long answers held open until the refusal
    has been checked; the next request is refused at once."""
    body = chat(messages=LONG_STORY, max_new_tokens=400)
    release = threading.Event()
    holders_ended: list[str] = []

    def hold() -> None:
        url = f"{stack.worker_url}/api/worker_generate_stream"
        with httpx.Client(headers=stack.headers, timeout=300) as client, client.stream("POST", url, json=body) as r:
            for _ in r.iter_raw():
                if release.is_set():
                    break  # leaving aborts the answer, which frees the slot for the next holder
            else:
                holders_ended.append(f"{r.status_code} before the refusal was checked")

    holders = [threading.Thread(target=hold) for _ in range(WORKER_CONCURRENCY + WORKER_QUEUE)]
    for holder in holders:
        holder.start()
    try:
        wait_until(
            lambda: stack.worker_queue_length(stack.worker_url) >= WORKER_CONCURRENCY + WORKER_QUEUE,
            60,
            lambda: f"the slots to fill: {stack.worker_queue_length(stack.worker_url)} held; holders: {holders_ended}",
            interval=0.05,
        )
        started = time.monotonic()
        refused = httpx.post(f"{stack.worker_url}/api/worker_generate", json=chat(), headers=stack.headers)
        took = time.monotonic() - started
    finally:
        release.set()
        for holder in holders:
            holder.join(timeout=300)
    assert refused.status_code == 429 and refused.json()["error_code"] == 42903
    assert int(refused.headers["Retry-After"]) >= 1 and took < 1.0
    stack.wait_until_idle(30, "every slot to be freed")


def test_a_replica_stopped_with_sigterm_drains_finishes_its_stream_exits_0_and_comes_back(
    stack: Stack, record_property: Callable[[str, object], None]
) -> None:
    victim = stack.worker_urls[1]
    chunks: list[dict[str, Any]] = []

    def read_answer() -> None:
        body = chat(messages=LONG_STORY, max_new_tokens=150)
        url = f"{victim}/api/worker_generate_stream"
        raw = httpx.post(url, json=body, headers=stack.headers, timeout=120).content
        chunks.extend(json.loads(part) for part in raw.split(b"\0") if part.strip())

    reader = threading.Thread(target=read_answer)
    reader.start()
    wait_until(lambda: stack.worker_queue_length(victim) == 1, 30, "the stream to start")
    worker = worker_processes(int(victim.rsplit(":", 1)[1]))[0]
    log_before = stack.log_file.read_text()
    worker.send_signal(signal.SIGTERM)
    stopped = time.monotonic()

    wait_until(lambda: draining(victim), 5, "the replica's /health to say it drains (it drains for 5 s)")
    out_of_rotation = wait_until(
        lambda: stack.replica_status().get(victim) is False, 5, "the router to set the replica aside"
    )
    record_property("router_stopped_routing_after_s", round(out_of_rotation, 2))
    with stack.client() as client:  # meanwhile the front door serves from the other replica
        for _ in range(3):
            assert client.post(f"/api/{MODEL}/worker_generate", json=chat(max_new_tokens=4)).status_code == 200

    reader.join(timeout=120)
    assert chunks and chunks[-1]["finish_reason"] in ("stop", "length"), chunks[-1:]
    record_property("stream_finished_after_sigterm_s", round(time.monotonic() - stopped, 2))
    exited_0 = "exited with 0; restarting"
    wait_until(lambda: exited_0 in stack.log_file.read_text()[len(log_before) :], 60, f"{exited_0!r} in the log")
    record_property("worker_exited_0_after_s", round(time.monotonic() - stopped, 2))
    wait_until(lambda: answers(f"{victim}/health"), RESTART_TIMEOUT, "the replica to come back")
    wait_until(lambda: f"{victim}/api" in stack.registered_workers(), 30, "the replica to register again")
    wait_until(lambda: stack.replica_status().get(victim) is True, 30, "the router to admit the replica again")
