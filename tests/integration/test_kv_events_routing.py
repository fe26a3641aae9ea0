"""Policy `kv-events` on the session stack's two replicas, which publish vLLM's KV-cache events: requests that
share a long prefix land on the replica whose cache holds it, and vLLM's prefix cache there serves it again;
two routers agree, as both read the same events.

The stack's own router routes by load; this module starts two more, `llm-ops router --routing-policy
kv-events`, over the same controller and replicas, and alternates between them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, samples, total, wait_until, wait_until_serving
from tests.integration.conftest import MODEL, SERVICE_KEY, START_TIMEOUT, Stack, chat

pytestmark = pytest.mark.integration
# About 1,900 tokens: 14 of the CPU build's 128-token KV blocks, well under one replica's cache; unlike the
# other modules' documents, so that no earlier test's blocks match it.
DOCUMENT = " ".join(f"Lamp {i} glows {i * 5 % 11} times a night by the harbour wall." for i in range(120))
QUESTIONS = ["Which lamp is first?", "Where are the lamps?", "How many lamps are there?", "Name one lamp."]
WHOLE_BLOCKS = 13  # of the document's blocks, at least, whatever the template adds around it
HITS = "vllm:prefix_cache_hits_total"  # tokens whose KV the engine found cached
EVENTS_TIMEOUT = 10.0  # seconds for a finished prefill's BlockStored to reach both routers


def _start_router(stack: Stack, log_file: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [
        sys.executable, "-m", "llm_ops", "router",
        "--port", str(port),
        "--controller-address", stack.controller_url,
        "--routing-policy", "kv-events",
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


@pytest.fixture(scope="module")
def kv_routers(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    logs = tmp_path_factory.mktemp("kv-events-routers")
    started: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for name in ("first", "second"):
            process, url = _start_router(stack, logs / f"{name}.log")
            started.append(process)
            urls.append(url)
        for name in ("first", "second"):  # each follows both replicas' events
            wait_until(lambda log=logs / f"{name}.log": _subscriptions(log) >= len(stack.worker_urls), 30, "both")
        yield urls
    finally:
        for process in started:
            process.terminate()
            process.wait(timeout=30)


def _subscriptions(router_log: Path) -> int:
    return router_log.read_text().count("following the KV-cache events")


def _known_to_all(router_urls: list[str]) -> bool:
    return all(_most_cached_blocks(url) >= WHOLE_BLOCKS for url in router_urls)


def _most_cached_blocks(router_url: str) -> int:
    """The most KV-cache blocks the router knows any replica holds (from the replicas' events)."""
    replicas = httpx.get(f"{router_url}/replicas", timeout=5).json()["replicas"]
    return max(replica["cached_blocks"] or 0 for replica in replicas)


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


def test_requests_sharing_a_long_prefix_land_where_the_events_say_it_is_cached_through_either_router(
    stack: Stack, kv_routers: list[str]
) -> None:
    before = {url: total(samples(f"{url}/metrics"), HITS) for url in stack.worker_urls}
    for index, question in enumerate(QUESTIONS):
        _ask(kv_routers[index % 2], question, fastchat=index % 2 == 1)
        wait_until(
            lambda: all(_most_cached_blocks(url) >= WHOLE_BLOCKS for url in kv_routers), EVENTS_TIMEOUT, "events"
        )
    grew = {url: total(samples(f"{url}/metrics"), HITS) - before[url] for url in stack.worker_urls}
    holder = max(grew, key=lambda url: grew[url])
    # The first request stored the document's blocks on one replica; every later one, through either router and
    # either API, went there and found them cached, as vLLM's own counter says.
    assert grew[holder] >= (len(QUESTIONS) - 1) * WHOLE_BLOCKS * 128, grew
    assert [grew[url] for url in stack.worker_urls if url != holder] == [0], grew
