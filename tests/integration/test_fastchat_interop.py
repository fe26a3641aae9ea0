"""FastChat's own components work with LLM Ops: its OpenAI-compatible server in front of our controller
and workers, and its worker code registering with our controller."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import openai
import pytest

from llm_ops.bench.vllm_server import service_argv
from llm_ops.settings import DEFAULT_EMBEDDING_SERVICE, DEFAULT_SERVICE
from tests.conftest import assert_sentence_transformers_vectors, free_port, wait_until, wait_until_serving
from tests.integration.conftest import COMPOSE_FILE, HEART_BEAT_EXPIRATION, SERVICE_KEY, Stack

pytestmark = pytest.mark.integration
# A worker configured as the default model service is (the tokenizer's chat template, no --conv-template),
# under a name of its own and without API keys: FastChat's components send none.
FASTCHAT_MODEL = "SmolLM2-for-fastchat"
FASTCHAT_EMBEDDING_MODEL = "all-MiniLM-L6-v2-for-fastchat"  # the packaged embedding model's service, the same way
START_TIMEOUT = 600.0
FASTCHAT_WORKER = "http://127.0.0.1:1/fastchat-worker"
# FastChat's OpenAI server runs from a venv of its own, with pydantic 1 (scripts/install.sh says why).
FASTCHAT_PYTHON = Path(f"{sys.prefix}-fastchat") / "bin" / "python"


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def fastchat_worker(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One more worker of the packaged model, with the default service's flags, registered with the stack's
    controller (with the stack's service key): an engine of its own, because FastChat's components send no
    API key and the stack's workers require one. FastChat's server renders prompts itself with the
    `Conversation` the worker names."""
    yield from keyless_worker(stack, DEFAULT_SERVICE, FASTCHAT_MODEL, tmp_path_factory.mktemp("fastchat-worker"))


@pytest.fixture(scope="module")
def fastchat_embedding_worker(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The same for the packaged embedding model's service."""
    directory = tmp_path_factory.mktemp("fastchat-embedding-worker")
    yield from keyless_worker(stack, DEFAULT_EMBEDDING_SERVICE, FASTCHAT_EMBEDDING_MODEL, directory)


def keyless_worker(stack: Stack, service_name: str, served_name: str, directory: Path) -> Iterator[str]:
    """A worker of the compose service `service_name` under `served_name`, without API keys, registered with the
    stack's controller; stopped at the end."""
    log = directory / "worker.log"
    port = free_port()
    service = service_argv(COMPOSE_FILE, service_name)  # the flags after it win
    command = [
        sys.executable, "-m", "llm_ops", "worker", *service, "--port", str(port), "--served-model-name", served_name,
        "--controller-address", stack.controller_url, "--heart-beat-interval", "1",
    ]  # fmt: skip
    environment = {name: value for name, value in os.environ.items() if name != "LLM_OPS_API_KEYS"}
    environment["LLM_OPS_SERVICE_KEY"] = SERVICE_KEY
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environment)
    try:
        wait_until_serving(process, f"http://127.0.0.1:{port}/health", START_TIMEOUT, log, interval=1)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


@pytest.fixture(scope="module")
def fastchat_api(stack: Stack, fastchat_worker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """FastChat's own `fastchat.serve.openai_api_server`, pointed at our controller."""
    assert FASTCHAT_PYTHON.exists(), f"{FASTCHAT_PYTHON} is missing: `make install` creates it"
    directory = tmp_path_factory.mktemp("fastchat-api")
    port = free_port()
    command = [
        str(FASTCHAT_PYTHON), "-m", "fastchat.serve.openai_api_server",
        "--controller-address", stack.controller_url, "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with (directory / "server.log").open("wb") as out:
        env = os.environ | {"LOGDIR": str(directory)}  # FastChat writes its log files there
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=directory)
    try:
        wait_until_serving(
            process, f"http://127.0.0.1:{port}/v1/models", START_TIMEOUT, directory / "server.log", interval=1
        )
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(process)


def test_our_worker_names_the_fastchat_conversation_its_tokenizers_template_renders_as(fastchat_worker: str) -> None:
    conv = httpx.post(f"{fastchat_worker}/api/worker_get_conv_template").json()["conv"]
    assert conv["name"] == "smollm2" and conv["system_message"].startswith("You are a helpful AI assistant")


def test_fastchats_openai_server_serves_chat_from_our_workers_through_our_controller(fastchat_api: str) -> None:
    client = openai.OpenAI(base_url=fastchat_api, api_key="unused", max_retries=0)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    answer = client.chat.completions.create(model=FASTCHAT_MODEL, messages=question, temperature=0)  # type: ignore[arg-type]
    assert "Paris" in (answer.choices[0].message.content or "")
    assert answer.usage is not None and answer.usage.completion_tokens > 0


def test_fastchats_openai_server_streams_chat_from_our_workers(fastchat_api: str) -> None:
    client = openai.OpenAI(base_url=fastchat_api, api_key="unused", max_retries=0)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    stream = client.chat.completions.create(model=FASTCHAT_MODEL, messages=question, temperature=0, stream=True)  # type: ignore[arg-type]
    chunks = list(stream)
    assert len(chunks) > 3
    assert "Paris" in "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_fastchats_openai_server_serves_completions_from_our_workers(fastchat_api: str) -> None:
    client = openai.OpenAI(base_url=fastchat_api, api_key="unused", max_retries=0)
    answer = client.completions.create(
        model=FASTCHAT_MODEL, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert "Paris" in answer.choices[0].text


FASTCHAT_STREAM_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from fastchat.serve.openai_api_server import generate_completion_stream

    async def main():
        payload = {"model": sys.argv[2], "prompt": "The capital of France is", "temperature": 0,
                   "max_new_tokens": 8, "echo": False, "stop": None}
        texts = [chunk["text"] async for chunk in generate_completion_stream(payload, sys.argv[1])]
        with open(sys.argv[3], "w") as out:  # FastChat takes over stdout for its logs
            json.dump(texts, out)

    asyncio.run(main())
    """
)


def test_fastchats_stream_reader_reads_our_workers_stream(fastchat_worker: str, tmp_path: Path) -> None:
    output = tmp_path / "texts.json"
    command = [sys.executable, "-c", FASTCHAT_STREAM_SCRIPT, f"{fastchat_worker}/api", FASTCHAT_MODEL, str(output)]
    env = os.environ | {"LOGDIR": str(tmp_path)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    texts = json.loads(output.read_text())
    assert len(texts) > 3 and all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))  # cumulative
    assert "Paris" in texts[-1]


def test_fastchats_openai_server_serves_embeddings_from_our_embedding_worker(
    fastchat_api: str, fastchat_embedding_worker: str
) -> None:
    texts = ["The capital of France is Paris.", "A dragon learns to fly."]
    client = openai.OpenAI(base_url=fastchat_api, api_key="none", max_retries=0)
    answer = client.embeddings.create(model=FASTCHAT_EMBEDDING_MODEL, input=texts)
    assert_sentence_transformers_vectors([item.embedding for item in answer.data], texts)
    assert answer.usage.prompt_tokens > 2 * len(texts)


def test_fastchats_server_lists_what_our_controller_knows(fastchat_api: str) -> None:
    models = {model["id"] for model in httpx.get(f"{fastchat_api}/models").json()["data"]}
    assert FASTCHAT_MODEL in models


FASTCHAT_WORKER_SCRIPT = textwrap.dedent(
    """
    import sys
    from fastchat.serve.base_model_worker import BaseModelWorker

    def step(name):  # FastChat's logger has taken over sys.stdout
        sys.__stdout__.write(f"STEP {name}\\n")
        sys.__stdout__.flush()

    controller, worker_address = sys.argv[1], sys.argv[2]
    worker = BaseModelWorker(controller, worker_address, "test", "fastchat-model", ["fastchat-model"], 5, "vicuna_v1.1")
    worker.register_to_controller()
    worker.send_heart_beat()
    step("registered")
    sys.stdin.readline()  # silent until the test has seen the controller expire it
    worker.send_heart_beat()  # told it is unknown, FastChat's worker registers again
    step("registered again")
    """
)


def next_step(output: IO[bytes]) -> str:
    """The next STEP line the script printed; FastChat's own log lines come in between."""
    seen = []
    for line in output:
        if line.startswith(b"STEP "):
            return line.decode().removeprefix("STEP ").strip()
        seen.append(line.decode())
    raise AssertionError("the FastChat worker script ended early:\n" + "".join(seen))


@pytest.fixture
def open_controller(tmp_path: Path) -> Iterator[str]:
    """A controller without a service key, as FastChat's workers need: they cannot send one. (With one, as the
    stack's, a registration without it is refused: tests/unit/test_access.py.)"""
    port = free_port()
    command = [
        sys.executable, "-m", "llm_ops", "controller", "--port", str(port),
        "--heart-beat-expiration", str(HEART_BEAT_EXPIRATION),
    ]  # fmt: skip
    environment = {name: value for name, value in os.environ.items() if name != "LLM_OPS_SERVICE_KEY"}
    with (tmp_path / "controller.log").open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environment)
    try:
        wait_until_serving(process, f"http://127.0.0.1:{port}/health", 60, tmp_path / "controller.log")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


def registered_workers(controller: str) -> list[str]:
    return [worker["name"] for worker in httpx.get(f"{controller}/list_workers").json()["workers"]]


def test_a_fastchat_worker_registers_is_expired_and_registers_again(open_controller: str, tmp_path: Path) -> None:
    command = [sys.executable, "-c", FASTCHAT_WORKER_SCRIPT, open_controller, FASTCHAT_WORKER]
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=os.environ | {"LOGDIR": str(tmp_path)},
    )
    try:
        assert process.stdin is not None and process.stdout is not None
        assert next_step(process.stdout) == "registered"
        assert FASTCHAT_WORKER in registered_workers(open_controller)
        wait_until(
            lambda: FASTCHAT_WORKER not in registered_workers(open_controller),
            HEART_BEAT_EXPIRATION + 3,
            "the controller to drop a worker whose heartbeats stopped",
            interval=0.2,
        )
        process.stdin.write(b"heartbeat\n")
        process.stdin.flush()
        assert next_step(process.stdout) == "registered again"
        assert FASTCHAT_WORKER in registered_workers(open_controller)
    finally:
        if process.stdin is not None:
            process.stdin.close()  # the script, still waiting if the test failed, goes on and ends
        process.wait(timeout=30)
