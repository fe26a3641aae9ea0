"""Policy `prefix` on the session stack's two replicas: requests that share a long prefix, through FastChat's
route and OpenAI's alike, land on one replica, and vLLM's prefix cache there serves the prefix again.

The stack's own router routes by load; this module starts a second router, `llm-ops router
--routing-policy prefix`, over the same controller and replicas, and sends to it directly."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import free_port, samples, total, wait_until, wait_until_serving
from tests.integration.conftest import MODEL, SERVICE_KEY, START_TIMEOUT, Stack, chat

pytestmark = pytest.mark.integration
# About 1,900 tokens: 14 of the CPU build's 128-token KV blocks, well under one replica's cache.
DOCUMENT = " ".join(f"Stone {i} lies by the river, {i * 7 % 13} steps from the mill." for i in range(120))
QUESTIONS = ["Which stone is first?", "Where is the mill?", "How many stones are there?", "Name one stone."]
HITS = "vllm:prefix_cache_hits_total"  # tokens whose KV the engine found cached


@pytest.fixture(scope="module")
def prefix_router(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port, log_file = free_port(), tmp_path_factory.mktemp("prefix-router") / "router.log"
    command = [
        sys.executable, "-m", "llm_ops", "router",
        "--port", str(port),
        "--controller-address", stack.controller_url,
        "--routing-policy", "prefix",
    ]  # fmt: skip
    env = {name: value for name, value in os.environ.items() if name != "LLM_OPS_API_KEYS"}
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env | {"LLM_OPS_SERVICE_KEY": SERVICE_KEY}
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, f"{url}/health", START_TIMEOUT, log_file)
        wait_until(lambda: _admitted(url) == set(stack.worker_urls), 30, "the router to admit both replicas")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _admitted(router_url: str) -> set[str]:
    replicas = httpx.get(f"{router_url}/replicas", timeout=5).json()["replicas"]
    return {replica["url"] for replica in replicas if replica["admitted"] and MODEL in replica["models"]}


def _ask(router_url: str, question: str, fastchat: bool) -> None:
    if fastchat:
        path = f"/api/{MODEL}/worker_generate"
        body = chat(system_message=DOCUMENT, messages=[{"role": "user", "text": question}], max_new_tokens=4)
    else:
        path = "/v1/chat/completions"
        messages = [{"role": "system", "content": DOCUMENT}, {"role": "user", "content": question}]
        body = {"model": MODEL, "messages": messages, "max_tokens": 4, "temperature": 0}
    answer = httpx.post(f"{router_url}{path}", json=body, timeout=120)
    assert answer.status_code == 200, answer.text


def test_requests_sharing_a_long_prefix_land_on_one_replica_whose_prefix_cache_hits_grow(
    stack: Stack, prefix_router: str
) -> None:
    before = {url: total(samples(f"{url}/metrics"), HITS) for url in stack.worker_urls}
    for index, question in enumerate(QUESTIONS):
        _ask(prefix_router, question, fastchat=index % 2 == 0)
    grew = {url: total(samples(f"{url}/metrics"), HITS) - before[url] for url in stack.worker_urls}
    holder = max(grew, key=lambda url: grew[url])
    assert grew[holder] >= (len(QUESTIONS) - 1) * 13 * 128, (
        grew
    )  # the document's whole blocks, every time after the first
    assert [grew[url] for url in stack.worker_urls if url != holder] == [0], grew
