"""A worker stopped with SIGTERM drains (the plugin's lifespan): unhealthy at once, still serving for the
drain time, then the server's own shutdown (vLLM's, here uvicorn's): no new connections, requests in
flight finished. And the engine's end, asked for, is not logged as its failure."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from vllm.v1.engine.exceptions import EngineDeadError

from llm_ops.protocol.framing import DELIMITER
from llm_ops.worker.plugin import EngineStoppedAsAsked
from llm_ops.worker.vllm_api import ENGINE_CLIENT_LOGGER
from tests.conftest import draining, free_port, wait_until, wait_until_serving
from tests.unit.fake_vllm import chat, worker_state

ROOT = Path(__file__).parents[2]
START_TIMEOUT = 30.0
SIGNAL_TIMEOUT = 5.0  # for the worker's SIGTERM handler to run: milliseconds, unless the machine is starved


@pytest.fixture
def worker() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`tests.unit.drained_worker` in a process of its own, once it serves (its SIGTERM handler is in place)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tests.unit.drained_worker", str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, f"{url}/health", START_TIMEOUT)
        yield process, url
    finally:
        process.kill()
        process.wait()


def listening(url: str) -> bool:
    """Whether the worker still accepts connections (a connection it drops while it stops counts as yes)."""
    try:
        httpx.get(f"{url}/health")
    except httpx.ConnectError:
        return False
    except httpx.TransportError:
        return True
    return True


def queue_length(url: str) -> int:
    length: int = httpx.post(f"{url}/api/worker_get_status").json()["queue_length"]
    return length


@pytest.mark.slow
def test_sigterm_turns_health_unhealthy_serves_in_flight_streams_to_the_end_and_stops(
    worker: tuple[subprocess.Popen[bytes], str],
) -> None:
    process, url = worker
    chunks: list[dict[str, object]] = []
    streaming = threading.Event()

    def read_stream() -> None:
        with httpx.stream("POST", f"{url}/api/worker_generate_stream", json=chat(), timeout=30) as response:
            buffer = b""
            for data in response.iter_bytes():
                *complete, buffer = (buffer + data).split(DELIMITER)
                chunks.extend(json.loads(chunk) for chunk in complete if chunk)
                if chunks:
                    streaming.set()

    reader = threading.Thread(target=read_stream)
    reader.start()
    assert streaming.wait(timeout=30), "the stream did not start"  # the first word is out: nine are left
    process.send_signal(signal.SIGTERM)
    wait_until(lambda: draining(url), SIGNAL_TIMEOUT, "/health to say the worker drains")
    during_drain = httpx.post(f"{url}/api/worker_generate", json=chat(), timeout=30)
    assert during_drain.status_code == 200  # routed here before the front door noticed: still served

    wait_until(lambda: not listening(url), 15, "the worker to stop listening once its drain time is over")
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{url}/api/worker_generate", json=chat())

    reader.join(timeout=30)
    assert len(chunks) == 10 and chunks[-1]["finish_reason"] == "stop"
    assert str(chunks[-1]["text"]).endswith("word9")
    process.wait(timeout=15)  # stopped (its exit code is the stand-in server's, not vLLM's)


@pytest.mark.slow
def test_more_sigterms_do_not_cut_the_drain_short(worker: tuple[subprocess.Popen[bytes], str]) -> None:
    process, url = worker
    reader_done = threading.Event()
    finished: list[object] = []

    def read_whole() -> None:
        finished.append(httpx.post(f"{url}/api/worker_generate", json=chat(), timeout=30).json()["finish_reason"])
        reader_done.set()

    threading.Thread(target=read_whole).start()
    wait_until(lambda: queue_length(url) == 1, 30, "the request to be admitted")
    for _ in range(3):
        process.send_signal(signal.SIGTERM)
        time.sleep(0.1)  # deliberate: signals sent at once could merge into one; these come one by one, mid-drain
    assert reader_done.wait(timeout=30)
    assert finished == ["stop"]
    process.wait(timeout=15)


def engine_client_log(draining: bool, error: Exception) -> logging.LogRecord:
    """What vLLM's AsyncLLM logs when its output handler ends with `error`, through the plugin's filter."""
    worker = worker_state()
    worker.draining = draining
    try:
        raise error
    except Exception:
        record = logging.LogRecord(
            ENGINE_CLIENT_LOGGER, logging.ERROR, "async_llm.py", 906, "AsyncLLM output_handler failed.", (),
            sys.exc_info(),
        )  # fmt: skip
    assert EngineStoppedAsAsked(worker).filter(record)
    return record


def test_the_engines_end_during_a_stop_is_one_info_line_not_a_traceback_vllm_48745() -> None:
    record = engine_client_log(draining=True, error=EngineDeadError())
    assert (record.levelno, record.exc_info) == (logging.INFO, None)
    assert "stopped" in record.getMessage()


def test_an_engine_that_dies_while_serving_is_still_logged_as_an_error_with_its_traceback() -> None:
    record = engine_client_log(draining=False, error=EngineDeadError())
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.getMessage() == "AsyncLLM output_handler failed."


def test_other_failures_during_a_stop_keep_their_traceback() -> None:
    record = engine_client_log(draining=True, error=RuntimeError("detokenizer broke"))
    assert record.levelno == logging.ERROR and record.exc_info is not None
