"""The controller speaks FastChat's controller protocol: registration, heartbeats, expiry, dispatch."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import httpx
import pytest

from llm_ops.controller.app import create_controller_app
from llm_ops.controller.client import ControllerClient
from llm_ops.controller.registry import WorkerRegistry
from llm_ops.protocol.worker import WorkerStatus
from llm_ops.worker.registration import keep_registered
from tests.conftest import wait_until_async
from tests.unit.fake_vllm import asgi_client

pytestmark = pytest.mark.anyio
A, B = "http://10.0.0.1:21002/api", "http://10.0.0.2:21002/api"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> WorkerRegistry:
    return WorkerRegistry(expiration=30, clock=clock)


@pytest.fixture
async def client(registry: WorkerRegistry) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the controller (this module's own `client`)."""
    app = create_controller_app(registry)
    async with app.router.lifespan_context(app), asgi_client(app, "http://c") as client:
        yield client


def status(*models: str, queue_length: int = 0, speed: int = 1) -> WorkerStatus:
    return WorkerStatus(model_names=list(models), queue_length=queue_length, speed=speed)


def test_shortest_queue_sends_to_the_least_loaded_worker_and_counts_what_it_sent(registry: WorkerRegistry) -> None:
    registry.register(A, status("m", queue_length=2))
    registry.register(B, status("m", queue_length=0))
    assert [registry.address_for("m") for _ in range(4)] == [B, B, A, B]  # B: 0 -> 1 -> 2, tie goes to A


def test_shortest_queue_weighs_queues_by_speed(registry: WorkerRegistry) -> None:
    registry.register(A, status("m", queue_length=4, speed=4))
    registry.register(B, status("m", queue_length=2, speed=1))
    assert registry.address_for("m") == A


def test_lottery_picks_only_workers_of_the_model_in_proportion_to_speed(clock: FakeClock) -> None:
    registry = WorkerRegistry("lottery", clock=clock, rng=random.Random(7))
    registry.register(A, status("m", speed=3))
    registry.register(B, status("m", speed=1))
    registry.register("http://other/api", status("other", speed=100))
    picks = [registry.address_for("m") for _ in range(4000)]
    assert set(picks) == {A, B}
    assert 0.7 < picks.count(A) / len(picks) < 0.8


def test_no_worker_for_a_model_means_no_address(registry: WorkerRegistry) -> None:
    registry.register(A, status("m"))
    assert registry.address_for("gpt-4") is None


def test_a_worker_is_dropped_after_missing_heartbeats_for_the_expiration(
    registry: WorkerRegistry, clock: FakeClock
) -> None:
    registry.register(A, status("m"))
    registry.register(B, status("m"), check_heart_beat=False)  # FastChat: never expires
    clock.now += 29
    assert registry.heartbeat(A, 3) and registry.remove_expired() == []
    clock.now += 29
    assert registry.remove_expired() == []
    clock.now += 2
    assert registry.remove_expired() == [A]
    assert registry.models() == ["m"] and list(registry.workers) == [B]


async def test_fastchat_registration_heartbeat_and_listing(client: httpx.AsyncClient) -> None:
    body = {
        "worker_name": A,
        "check_heart_beat": True,
        "worker_status": {"model_names": ["m", "m.v2"], "speed": 1, "queue_length": 0},
        "multimodal": False,
    }
    assert (await client.post("/register_worker", json=body)).status_code == 200
    assert (await client.post("/list_models")).json() == {"models": ["m", "m.v2"]}
    assert (await client.post("/list_language_models")).json() == {"models": ["m", "m.v2"]}
    assert (await client.post("/list_multimodal_models")).json() == {"models": []}
    assert (await client.post("/get_worker_address", json={"model": "m.v2"})).json() == {"address": A}
    assert (await client.post("/get_worker_address", json={"model": "x"})).json() == {"address": ""}
    heartbeat = {"worker_name": A, "queue_length": 5, "some_future_field": 1}
    assert (await client.post("/receive_heart_beat", json=heartbeat)).json() == {"exist": True}
    workers = (await client.get("/list_workers")).json()["workers"]
    assert [(w["name"], w["model_names"], w["queue_length"]) for w in workers] == [(A, ["m", "m.v2"], 5)]
    unknown = {"worker_name": B, "queue_length": 0}
    assert (await client.post("/receive_heart_beat", json=unknown)).json() == {"exist": False}
    assert (await client.get("/test_connection")).json() == "success"


async def test_a_registration_without_status_asks_the_worker_and_fails_if_it_cannot(
    client: httpx.AsyncClient, registry: WorkerRegistry
) -> None:
    unreachable = {"worker_name": "http://127.0.0.1:9/api", "check_heart_beat": True}
    response = await client.post("/register_worker", json=unreachable)
    assert response.status_code == 502 and response.json() == {"registered": False}
    assert registry.workers == {}


async def test_refresh_drops_workers_that_no_longer_answer(client: httpx.AsyncClient, registry: WorkerRegistry) -> None:
    registry.register("http://127.0.0.1:9/api", status("m"))
    assert (await client.post("/refresh_all_workers")).status_code == 200
    assert registry.workers == {}


async def test_a_bad_body_is_refused_with_422_naming_the_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/receive_heart_beat", json={"worker_name": A, "queue_length": "many"})
    assert response.status_code == 422 and "queue_length" in response.text


async def test_a_worker_registers_sends_its_queue_and_registers_again_when_forgotten(
    client: httpx.AsyncClient, registry: WorkerRegistry
) -> None:
    queue = {"length": 0}

    def worker_status() -> WorkerStatus:
        return status("m", queue_length=queue["length"])

    task = asyncio.create_task(keep_registered(ControllerClient(client, "http://c"), A, worker_status, 0.01))
    try:
        await wait_until_async(lambda: A in registry.workers, 5, "the worker to register")
        queue["length"] = 7
        await wait_until_async(lambda: registry.workers[A].queue_length == 7, 5, "a heartbeat with the new queue")
        registry.remove(A)  # as after a controller restart, or an expiry
        await wait_until_async(lambda: A in registry.workers, 5, "the worker to register again")
    finally:
        task.cancel()


async def test_registration_goes_on_after_a_failure_that_is_not_an_http_error(
    client: httpx.AsyncClient, registry: WorkerRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    statuses = iter([ValueError("a status that cannot be read")])

    def worker_status() -> WorkerStatus:
        failure = next(statuses, None)
        if failure is not None:
            raise failure
        return status("m")

    task = asyncio.create_task(keep_registered(ControllerClient(client, "http://c"), A, worker_status, 0.01))
    try:
        await wait_until_async(lambda: A in registry.workers, 5, "the worker to register after the failure")
    finally:
        task.cancel()
    assert "a status that cannot be read" in caplog.text
