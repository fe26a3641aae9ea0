"""A worker's /metrics: requests by mode and outcome, latencies, tokens, running and waiting requests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llm_ops.protocol.worker import GenerateRequest
from llm_ops.worker.admission import Admission
from llm_ops.worker.app import create_worker_app
from tests.unit.fake_engine import FakeEngine, fake_service, open_fake_service
from tests.unit.served import served

pytestmark = pytest.mark.anyio
CHAT = {"model_identifier": "fake-model", "generation_mode": "chat", "messages": [{"role": "user", "text": "Hi"}]}
COMPLETION = {"model_identifier": "fake-model", "generation_mode": "completion", "prompt": "Once upon"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(fail_seed=13)


@pytest.fixture
async def client(engine: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    admission = Admission(max_running=1, max_waiting=0, max_wait_seconds=1)
    app = create_worker_app(lambda: open_fake_service(engine, admission))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
            yield client


async def samples(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def requests(mode: str, outcome: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("llm_ops_requests_total", (("mode", mode), ("model", "fake-model"), ("outcome", outcome)))


MODEL = (("model", "fake-model"),)


async def test_finished_requests_are_counted_by_mode_with_their_latencies_and_tokens(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/worker_generate", json=CHAT)).status_code == 200
    async with client.stream("POST", "/api/worker_generate_stream", json=COMPLETION) as response:
        await response.aread()
    found = await samples(client)
    assert found[requests("chat", "finished")] == 1 and found[requests("completion", "finished")] == 1
    assert found[("llm_ops_time_to_first_token_seconds_count", MODEL)] == 2
    assert found[("llm_ops_inter_token_latency_seconds_count", MODEL)] == 8  # five words each: four gaps
    assert found[("llm_ops_e2e_request_latency_seconds_count", MODEL)] == 2
    assert found[("llm_ops_generation_tokens_total", MODEL)] == 10
    assert found[("llm_ops_prompt_tokens_total", MODEL)] > 0


async def test_failed_refused_and_overloaded_requests_are_counted_as_such(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    assert (await client.post("/api/worker_generate", json=CHAT | {"seed": 13})).status_code == 500
    too_long = COMPLETION | {"prompt": "word " * 100}
    assert (await client.post("/api/worker_generate", json=too_long)).status_code == 400
    engine.delay = 0.05
    first = asyncio.create_task(client.post("/api/worker_generate", json=CHAT))
    await asyncio.sleep(0.02)
    assert (await client.post("/api/worker_generate", json=CHAT)).status_code == 429
    while_running = await samples(client)
    await first
    found = await samples(client)
    assert found[requests("chat", "error")] == 1
    assert found[requests("completion", "refused")] == 1
    assert found[requests("chat", "overloaded")] == 1
    assert while_running[("llm_ops_requests_running", MODEL)] == 1
    assert found[("llm_ops_requests_running", MODEL)] == 0 and found[("llm_ops_requests_waiting", MODEL)] == 0


async def test_a_stream_closed_early_counts_as_aborted(engine: FakeEngine) -> None:
    service = fake_service(engine)
    stream = service.stream(await service.prepare(GenerateRequest.model_validate(CHAT)))
    await anext(stream)
    await stream.aclose()  # what the HTTP layer does when the client leaves
    text = service.metrics.render(running=0, waiting=0).decode()
    assert 'llm_ops_requests_total{mode="chat",model="fake-model",outcome="aborted"} 1.0' in text


def test_a_client_that_leaves_while_waiting_for_a_slot_counts_as_aborted(engine: FakeEngine) -> None:
    engine.delay = 0.2  # the first answer holds the only running slot for about a second
    admission = Admission(max_running=1, max_waiting=1, max_wait_seconds=5)
    app = create_worker_app(lambda: open_fake_service(engine, admission))
    with served(app) as url, httpx.Client(base_url=url) as client:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(client.post, "/api/worker_generate", json=CHAT)
            time.sleep(0.1)
            with pytest.raises(httpx.ReadTimeout):
                client.post("/api/worker_generate", json=CHAT, timeout=0.3)
            assert running.result().status_code == 200
        text = client.get("/metrics").text
    assert 'llm_ops_requests_total{mode="chat",model="fake-model",outcome="aborted"} 1.0' in text
    assert 'llm_ops_requests_total{mode="chat",model="fake-model",outcome="finished"} 1.0' in text
