"""WorkerService aborts in the engine what nobody reads any more."""

from __future__ import annotations

import asyncio

import pytest

from llm_ops.protocol.worker import GenerateRequest
from tests.unit.fake_engine import FakeEngine, fake_service

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def chat_request() -> GenerateRequest:
    return GenerateRequest.model_validate(
        {"model_identifier": "fake-model", "generation_mode": "chat", "messages": [{"role": "user", "text": "Hi"}]}
    )


async def test_closing_a_stream_early_aborts_the_engine_request() -> None:
    engine = FakeEngine(delay=0.01)
    service = fake_service(engine)
    stream = service.stream(await service.prepare(chat_request()))
    await anext(stream)
    assert engine.running_requests() == 1
    await stream.aclose()
    assert engine.aborted == engine.started
    assert engine.running_requests() == 0


async def test_cancelling_a_whole_answer_aborts_the_engine_request() -> None:
    engine = FakeEngine(delay=0.05)
    service = fake_service(engine)
    task = asyncio.create_task(service.generate(await service.prepare(chat_request())))
    await asyncio.sleep(0.07)
    assert engine.running_requests() == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.aborted == engine.started
    assert engine.running_requests() == 0


async def test_finished_requests_are_not_aborted() -> None:
    engine = FakeEngine()
    service = fake_service(engine)
    await service.generate(await service.prepare(chat_request()))
    assert engine.finished == engine.started
    assert engine.aborted == []


async def test_many_abandoned_and_failed_requests_leave_nothing_running_in_the_engine() -> None:
    engine = FakeEngine(delay=0.001, fail_after=3)
    service = fake_service(engine)

    async def abandon_after(chunks: int) -> None:
        stream = service.stream(await service.prepare(chat_request()))
        async for _ in stream:
            chunks -= 1
            if chunks == 0:
                break
        await stream.aclose()

    await asyncio.gather(*(abandon_after(n % 5 + 1) for n in range(100)))
    assert engine.running_requests() == 0
    assert sorted(engine.started) == sorted(engine.finished + engine.aborted)
