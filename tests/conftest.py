"""Shared test helpers. Integration fixtures (the real stack) live in tests/integration/conftest.py.

A test that waits for another process, thread or server waits for what it means, with `wait_until`: the
condition itself, polled, with a deadline and a failure that says what did not happen. Never a bare sleep.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import re
import shlex
import socket
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

LOG_TAIL = 5000  # characters of a process's log shown when it exited too early
README = Path(__file__).parents[1] / "README.md"
README_CA = ".llm-ops/tls/ca.pem"
README_BASE_URL = "https://localhost:8443"
ENGINE_PROCESS = "VLLM::Worker"  # the process whose threads run the model (vLLM sets its title)
EMBEDDING_DIMENSIONS = 384  # the packaged all-MiniLM-L6-v2's


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports_in_a_row(count: int) -> int:
    """The first of `count` consecutive free ports (for replicas on --port, --port + 1, ...)."""
    while True:
        first = free_port()
        try:
            with contextlib.ExitStack() as held:
                for port in range(first, first + count):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", port))
        except OSError:
            continue
        return first


class FrontDoor:
    """What the tests reach a running stack through (the native one or the containers): its HTTPS base
    URL, the CA its certificate comes from, an API key it accepts, and the key its services show each other
    (a worker's status is for them only)."""

    base_url: str
    ca_file: Path
    api_key: str
    service_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def tls(self) -> ssl.SSLContext:
        """Trusts the stack's CA, and nothing else."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def client(self, **kwargs: Any) -> httpx.Client:
        """A client of the front door that trusts the stack's CA and sends the API key."""
        defaults = {"timeout": 120, "headers": self.headers}
        return httpx.Client(base_url=self.base_url, verify=self.tls(), **(defaults | kwargs))

    def worker_queue_length(self, worker_url: str) -> int:
        """FastChat's queue length of one replica, asked of the worker itself."""
        service = {"Authorization": f"Bearer {self.service_key}"}
        response = httpx.post(f"{worker_url}/api/worker_get_status", headers=service, timeout=5)
        length: int = response.json()["queue_length"]
        return length


def _failure(what: str | Callable[[], str], timeout: float) -> str:
    return f"waited {timeout:g} s for {what if isinstance(what, str) else what()}"


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str | Callable[[], str], interval: float = 0.1
) -> float:
    """Seconds until `condition()` held, polled every `interval` seconds. After `timeout` seconds the test
    fails with "waited TIMEOUT s for WHAT" (`what` phrased as "X to happen"; a callable is asked then, to
    say what was seen). An exception `condition` raises ends the wait at once."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(_failure(what, timeout))
        time.sleep(interval)
    return time.monotonic() - started


async def wait_until_async(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout: float,
    what: str | Callable[[], str],
    interval: float = 0.01,
) -> float:
    """`wait_until` in an event loop: the loop runs on while it polls; `condition` may be a coroutine function."""
    started = time.monotonic()
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            pytest.fail(_failure(what, timeout))
        await anyio.sleep(interval)


def still_running(process: subprocess.Popen[bytes], log_file: Path | None = None) -> bool:
    """True while `process` runs; once it has exited, RuntimeError with its exit code (and the end of its
    log): a wait for something it was to do ends there."""
    if process.poll() is None:
        return True
    log = f":\n{log_file.read_text()[-LOG_TAIL:]}" if log_file is not None else ""
    raise RuntimeError(f"the process exited with {process.returncode}{log}")


def answers(url: str, method: str = "GET") -> bool:
    """Whether `url` answers 200 (False while nothing listens there)."""
    try:
        return httpx.request(method, url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def draining(server_url: str) -> bool:
    """Whether a server's /health (a worker's, the controller's, the router's) says it drains (after SIGTERM:
    503, status "draining")."""
    try:
        health = httpx.get(f"{server_url}/health", timeout=5)
    except httpx.TransportError:
        return False
    return health.status_code == 503 and health.json()["status"] == "draining"


def wait_until_serving(
    process: subprocess.Popen[bytes],
    url: str,
    timeout: float,
    log_file: Path | None = None,
    method: str = "GET",
    interval: float = 0.1,
) -> float:
    """Seconds until `url` answers 200; RuntimeError if `process`, which is to serve it, exits first."""
    return wait_until(
        lambda: still_running(process, log_file) and answers(url, method), timeout, f"{url} to answer", interval
    )


def readme_curl_examples() -> list[str]:
    """The README's curl commands, as written there (bash code blocks that start with `curl`)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL)
    return [block.strip() for block in blocks if block.startswith("curl ")]


def pointed_at(example: str, door: FrontDoor, endpoint: str | None = None) -> str:
    """`example` with the front door's address, its CA and its key (and `endpoint` in place of the one written)."""
    command = example.replace(README_CA, shlex.quote(str(door.ca_file)))
    command = command.replace(README_BASE_URL, door.base_url)
    if endpoint is not None:
        command = re.sub(r"/worker_generate(_stream)?\b", endpoint, command)
    authorization = shlex.quote(f"Authorization: Bearer {door.api_key}")
    return command.replace("curl ", f"curl --fail-with-body --silent --show-error -H {authorization} ", 1)


def answers_of(output: str) -> list[dict[str, object]]:
    """A whole answer is one JSON object; a stream, shown by the README's `tr '\\0' '\\n'` or not, is several."""
    return [json.loads(chunk) for chunk in re.split(r"[\0\n]+", output) if chunk.strip()]


def run_bash(command: str) -> str:
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, timeout=120)
    assert done.returncode == 0, f"{command}\nexit {done.returncode}: {done.stderr.decode()} {done.stdout[-500:]!r}"
    return done.stdout.decode()


@functools.cache
def sentence_transformer() -> Any:
    """sentence-transformers' model of the packaged embedding model, from the folder the worker serves."""
    from sentence_transformers import SentenceTransformer

    from llm_ops.models.embedding import ensure_embedding_model

    return SentenceTransformer(str(ensure_embedding_model()), device="cpu")


def assert_sentence_transformers_vectors(vectors: Sequence[Sequence[float]], texts: Sequence[str]) -> None:
    """`vectors` are sentence-transformers' for `texts`: cosine >= 0.999 each, the same dimension, unit length."""
    expected = sentence_transformer().encode(list(texts))
    assert len(vectors) == len(expected)
    for vector, reference in zip(vectors, expected, strict=True):
        assert len(vector) == len(reference) == EMBEDDING_DIMENSIONS
        norm = math.sqrt(sum(x * x for x in vector))
        cosine = sum(x * float(y) for x, y in zip(vector, reference, strict=True)) / norm  # reference: unit length
        assert cosine >= 0.999, cosine
        assert math.isclose(norm, 1.0, abs_tol=1e-3)  # normalized, as the model is


def samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A Prometheus endpoint's samples: (name, labels) -> value."""
    text = httpx.get(url, timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels` (vLLM adds its engine's index, ...)."""
    wanted = set(labels.items())
    return sum(value for (sample, found), value in scraped.items() if sample == name and wanted <= found)
