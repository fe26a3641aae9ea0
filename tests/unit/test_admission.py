"""Admission: a bounded number of requests run, a bounded number wait, the rest get 429 at once, and
no way a request can end keeps its slot."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator

import httpx
import pytest

from llm_ops.worker.admission import Admission, Overloaded
from llm_ops.worker.app import create_worker_app
from tests.unit.fake_engine import FakeEngine, open_fake_service
from tests.unit.served import served

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def chat(**fields: object) -> dict[str, object]:
    body = {"model_identifier": "fake-model", "generation_mode": "chat", "messages": [{"role": "user", "text": "Hi"}]}
    return body | fields


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(delay=0.05, fail_seed=13)  # five words: 0.25 s per answer


@pytest.fixture
def admission() -> Admission:
    return Admission(max_running=2, max_waiting=2, max_wait_seconds=5)


@pytest.fixture
def worker_url(engine: FakeEngine, admission: Admission) -> Iterator[str]:
    with served(create_worker_app(lambda: open_fake_service(engine, admission))) as url:
        yield url


async def test_admission_refuses_at_once_when_running_and_waiting_slots_are_taken() -> None:
    admission = Admission(max_running=1, max_waiting=1, max_wait_seconds=5)
    running = await admission.acquire()
    waiting = asyncio.create_task(admission.acquire())
    await asyncio.sleep(0.01)
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
    await asyncio.sleep(0.01)
    assert admission.waiting == 3
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
    async with httpx.AsyncClient(base_url=worker_url, timeout=30) as client:

        async def timed(path: str) -> tuple[httpx.Response, float]:
            started = time.monotonic()
            response = await client.post(path, json=chat())
            return response, time.monotonic() - started

        paths = ["/api/worker_generate", "/api/worker_generate_stream"] * 3
        results = await asyncio.gather(*(timed(path) for path in paths))
    refused = [(r, took) for r, took in results if r.status_code == 429]
    served_fully = [r for r, _ in results if r.status_code == 200]
    assert len(refused) == 2 and len(served_fully) == 4
    for response, took in refused:
        assert response.json()["error_code"] == 42903 and "capacity" in response.json()["text"]
        assert int(response.headers["Retry-After"]) >= 1
        assert took < 0.2  # answered at once, not after the queue moved
    for response in served_fully:
        assert response.text.rstrip("\0").endswith('"finish_reason":"stop"}')


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


async def test_no_way_a_request_ends_keeps_its_slot(worker_url: str, engine: FakeEngine) -> None:
    kinds = ["success", "invalid", "engine error", "stream engine error", "stream abandoned", "client timeout"]
    random.seed(7)
    plan = [kinds[n % len(kinds)] for n in range(300)]
    random.shuffle(plan)
    at_once = asyncio.Semaphore(8)  # against 2 running and 2 waiting slots: some wait, some are refused

    async def limited(kind: str) -> str:
        async with at_once:
            outcome = await _one_way_to_end(client, kind)
            if outcome == "429":  # a refusal is instant: without a pause, refusals would crowd out the rest
                await asyncio.sleep(0.2)
            return outcome

    async with httpx.AsyncClient(base_url=worker_url, timeout=30) as client:
        outcomes = await asyncio.gather(*(limited(kind) for kind in plan))
        seen = set(outcomes)
        assert {"200", "400", "429", "500", "200/error", "abandoned", "timed out"} <= seen, seen
        deadline = time.monotonic() + 5
        while (status := (await client.post("/api/worker_get_status")).json())["queue_length"] != 0:
            assert time.monotonic() < deadline, f"slots still held: {status}"
            await asyncio.sleep(0.05)
        assert engine.running_requests() == 0
        assert (await client.post("/api/worker_generate", json=chat())).status_code == 200
