"""Admission: a bounded number of requests run, a bounded number wait, the rest get 429 at once, and
no way a request can end keeps its slot."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi import FastAPI

from llm_ops.protocol.errors import Overloaded
from llm_ops.worker.admission import Admission
from tests.conftest import wait_until, wait_until_async
from tests.unit.fake_vllm import FakeVllm, asgi_client, chat, fake_worker, openai_chat
from tests.unit.served import served

pytestmark = pytest.mark.anyio

BODIES: dict[str, dict[str, object]] = {
    "/api/worker_generate_stream": chat(),
    "/api/worker_generate": chat(),
    "/v1/completions": {"model": "fake-model", "prompt": "Once upon", "max_tokens": 8},
}


ADMISSION = ["--limit-worker-concurrency", "2", "--max-queued-requests", "2", "--max-queue-wait", "5"]


@pytest.fixture
def vllm() -> FakeVllm:
    return FakeVllm(delay=0.05, fail_seed=13)  # five words: 0.25 s per answer


@pytest.fixture
def app(vllm: FakeVllm) -> FastAPI:
    """A worker with 2 running and 2 waiting slots (built outside the test's event loop: it is served in
    a thread with a loop of its own)."""
    return asyncio.run(fake_worker(vllm, flags=ADMISSION))


@pytest.fixture
def worker_url(app: FastAPI) -> Iterator[str]:
    with served(app) as url:
        yield url


async def test_admission_refuses_at_once_when_running_and_waiting_slots_are_taken() -> None:
    admission = Admission(max_running=1, max_waiting=1, max_wait_seconds=5)
    running = await admission.acquire()
    waiting = asyncio.create_task(admission.acquire())
    await wait_until_async(lambda: admission.waiting == 1, 5, "the second request to wait")
    started = time.monotonic()
    with pytest.raises(Overloaded) as refused:
        await admission.acquire()
    assert time.monotonic() - started < 0.05
    assert refused.value.code == 42903 and refused.value.retry_after >= 1
    running.release()
    (await waiting).release()
    assert (admission.running, admission.waiting) == (0, 0)


async def test_a_slot_released_twice_counts_once() -> None:
    admission = Admission(max_running=1, max_waiting=0, max_wait_seconds=1)
    slot = await admission.acquire()
    slot.release()
    slot.release()
    assert admission.running == 0
    (await admission.acquire()).release()
    assert admission.running == 0


async def test_a_cancelled_wait_leaves_no_trace() -> None:
    admission = Admission(max_running=1, max_waiting=4, max_wait_seconds=5)
    running = await admission.acquire()
    waits = [asyncio.create_task(admission.acquire()) for _ in range(3)]
    await wait_until_async(lambda: admission.waiting == 3, 5, "three requests to wait")
    for wait in waits:
        wait.cancel()
    await asyncio.gather(*waits, return_exceptions=True)
    running.release()
    assert (admission.running, admission.waiting) == (0, 0)
    (await admission.acquire()).release()


async def test_a_request_that_waits_longer_than_allowed_gets_429() -> None:
    admission = Admission(max_running=1, max_waiting=1, max_wait_seconds=0.05)
    running = await admission.acquire()
    with pytest.raises(Overloaded, match="waited 0.05 s"):
        await admission.acquire()
    running.release()
    assert (admission.running, admission.waiting) == (0, 0)


async def test_beyond_the_limits_the_worker_answers_429_42903_with_retry_after_while_admitted_requests_finish(
    worker_url: str,
) -> None:
    """FastChat's routes and vLLM's OpenAI ones share the slots."""
    async with httpx.AsyncClient(base_url=worker_url, timeout=30) as client:

        async def timed(path: str) -> tuple[str, httpx.Response, float]:
            started = time.monotonic()
            response = await client.post(path, json=BODIES[path])
            return path, response, time.monotonic() - started

        paths = ["/api/worker_generate_stream", "/v1/completions"] * 3
        results = await asyncio.gather(*(timed(path) for path in paths))
    refused = [(path, r, took) for path, r, took in results if r.status_code == 429]
    served_fully = [(path, r) for path, r, _ in results if r.status_code == 200]
    # answered at once, not after the queue moved: before any admitted request has finished
    assert max(took for *_, took in refused) < min(took for _, r, took in results if r.status_code == 200)
    assert len(refused) == 2 and len(served_fully) == 4
    for path, response, _ in refused:
        if path.startswith("/api/"):
            assert response.json()["error_code"] == 42903 and "capacity" in response.json()["text"]
        else:
            assert response.json()["error"]["code"] == 429 and "capacity" in response.json()["error"]["message"]
        assert int(response.headers["Retry-After"]) >= 1
    for path, response in served_fully:
        ending = '"finish_reason":"stop"}' if path.startswith("/api/") else '"finish_reason":"stop"'
        assert ending in response.text


@pytest.mark.parametrize("path", ["/api/worker_generate_stream", "/v1/completions"])
async def test_through_the_middleware_a_full_worker_refuses_with_429_and_retry_after(path: str) -> None:
    vllm = FakeVllm(delay=0.1)
    app = await fake_worker(vllm, flags=["--limit-worker-concurrency", "1", "--max-queued-requests", "0"])
    async with asgi_client(app) as client:
        first = asyncio.create_task(client.post(path, json=BODIES[path]))
        await wait_until_async(lambda: vllm.started == 1, 5, "the first request to reach vLLM")
        refused = await client.post(path, json=BODIES[path])
        assert (await first).status_code == 200
        after = await client.post(path, json=BODIES[path])
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "15"
    assert after.status_code == 200
    assert vllm.started == vllm.finished == 2  # the refused request never reached vLLM


@pytest.mark.parametrize("path", ["/api/worker_generate", "/v1/chat/completions"])
async def test_a_closed_admission_answers_503_and_the_engine_is_not_asked(path: str) -> None:
    vllm = FakeVllm()
    app = await fake_worker(vllm)
    app.state.llm_ops.admission.closed = True
    body = chat() if path.startswith("/api/") else openai_chat()
    async with asgi_client(app) as client:
        response = await client.post(path, json=body)
        status = await client.post("/api/worker_get_status")
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert "shutting down" in response.text and vllm.requests == []
    assert status.status_code == 200  # only generation routes are admitted


def test_a_client_that_leaves_while_waiting_frees_its_place_in_the_queue(vllm: FakeVllm) -> None:
    vllm.delay = 0.2  # an answer holds a running slot for about a second
    app = asyncio.run(fake_worker(vllm, flags=["--limit-worker-concurrency", "1", "--max-queued-requests", "1"]))
    admission: Admission = app.state.llm_ops.admission
    with served(app) as url, httpx.Client(base_url=url) as client, ThreadPoolExecutor(1) as pool:
        running = pool.submit(client.post, "/api/worker_generate", json=chat())
        wait_until(lambda: vllm.started == 1, 5, "the first request to run", interval=0.01)
        with pytest.raises(httpx.ReadTimeout):
            client.post("/api/worker_generate", json=chat(), timeout=0.3)  # waits, then leaves
        wait_until(lambda: admission.waiting == 0, 2, "the wait of the client that left to end", interval=0.01)
        assert admission.running == 1  # the first request is still running: the place was freed, not served
        waiting_again = pool.submit(client.post, "/api/worker_generate", json=chat())
        assert running.result().status_code == 200 and waiting_again.result().status_code == 200
    assert vllm.started == vllm.finished == 2  # the one that left never reached vLLM
    assert (admission.running, admission.waiting) == (0, 0)


def test_a_client_that_leaves_a_stream_aborts_the_generation_and_frees_the_slot(vllm: FakeVllm) -> None:
    vllm.delay = 0.1
    app = asyncio.run(fake_worker(vllm, flags=ADMISSION))
    with served(app) as url, httpx.Client(base_url=url) as client:
        for path in ("/api/worker_generate_stream", "/v1/completions"):
            body = BODIES[path] | ({"stream": True} if path.startswith("/v1/") else {})
            with client.stream("POST", path, json=body) as response:
                next(response.iter_bytes())
        admission: Admission = app.state.llm_ops.admission
        wait_until(
            lambda: vllm.aborted >= 2 and admission.running == 0,
            2,
            lambda: (
                f"both generations aborted, their slots freed (aborted {vllm.aborted}, running {admission.running})"
            ),
            interval=0.01,
        )
    assert vllm.finished == 0


async def _one_way_to_end(client: httpx.AsyncClient, kind: str) -> str:
    """One request that ends the way `kind` says; returns what happened."""
    try:
        if kind == "success":
            return str((await client.post("/api/worker_generate", json=chat())).status_code)
        if kind == "invalid":
            return str((await client.post("/api/worker_generate", json=chat(top_p=5))).status_code)
        if kind == "engine error":
            return str((await client.post("/api/worker_generate", json=chat(seed=13))).status_code)
        if kind == "stream engine error":
            async with client.stream("POST", "/api/worker_generate_stream", json=chat(seed=13)) as response:
                return str(response.status_code) + ("/error" if b"50001" in await response.aread() else "")
        if kind == "stream abandoned":
            async with client.stream("POST", "/api/worker_generate_stream", json=chat()) as response:
                async for _ in response.aiter_bytes():
                    break
                return "abandoned" if response.status_code == 200 else str(response.status_code)
        if kind == "client timeout":  # also abandons requests still waiting in the queue
            response = await client.post("/api/worker_generate", json=chat(), timeout=random.uniform(0.01, 0.3))
            return "finished before the timeout" if response.status_code == 200 else str(response.status_code)
    except httpx.TimeoutException:
        return "timed out"
    raise AssertionError(kind)


async def test_no_way_a_request_ends_keeps_its_slot(worker_url: str, vllm: FakeVllm) -> None:
    kinds = ["success", "invalid", "engine error", "stream engine error", "stream abandoned", "client timeout"]
    random.seed(7)
    plan = [kinds[n % len(kinds)] for n in range(300)]
    random.shuffle(plan)
    at_once = asyncio.Semaphore(8)  # against 2 running and 2 waiting slots: some wait, some are refused

    async def limited(kind: str) -> str:
        async with at_once:
            outcome = await _one_way_to_end(client, kind)
            if outcome == "429":  # load pacing: refusals are instant; without a pause they would crowd out the rest
                await asyncio.sleep(0.2)
            return outcome

    async with httpx.AsyncClient(base_url=worker_url, timeout=30) as client:
        outcomes = await asyncio.gather(*(limited(kind) for kind in plan))
        seen = set(outcomes)
        assert {"200", "400", "429", "500", "200/error", "abandoned", "timed out"} <= seen, seen
        statuses: list[dict[str, int]] = []

        async def slots_free() -> bool:
            statuses.append((await client.post("/api/worker_get_status")).json())
            return statuses[-1]["queue_length"] == 0

        await wait_until_async(slots_free, 5, lambda: f"every slot to be freed: {statuses[-1]}", interval=0.05)
        assert vllm.get_num_unfinished_requests() == 0
        assert (await client.post("/api/worker_generate", json=chat())).status_code == 200


async def test_without_a_limit_a_worker_runs_as_many_requests_at_once_as_vllms_engine() -> None:
    app = await fake_worker(FakeVllm(max_num_seqs=48))
    assert app.state.llm_ops.admission.max_running == 48  # --max-num-seqs; FastChat's fixed default was 64
    limited = await fake_worker(FakeVllm(max_num_seqs=48), flags=["--limit-worker-concurrency", "3"])
    assert limited.state.llm_ops.admission.max_running == 3
