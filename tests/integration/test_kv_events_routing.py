"""Policy `kv-events` on the session stack's two replicas, which publish vLLM's KV-cache events: requests that
share a long prefix land on the replica whose cache holds it, and vLLM's prefix cache there serves it again;
two routers agree, as both read the same events.

The stack's own router routes by `prefix` (the default); this module starts two more, `llm-ops router --routing-policy
kv-events`, over the same controller and replicas, and alternates between them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_until
from tests.integration.conftest import Stack, ask_about, prefix_cache_hits, start_router

pytestmark = pytest.mark.integration
# About 1,900 tokens: 14 of the CPU build's 128-token KV blocks, well under one replica's cache; unlike the
# other modules' documents, so that no earlier test's blocks match it.
DOCUMENT = " ".join(f"Lamp {i} glows {i * 5 % 11} times a night by the harbour wall." for i in range(120))
QUESTIONS = ["Which lamp is first?", "Where are the lamps?", "How many lamps are there?", "Name one lamp."]
WHOLE_BLOCKS = 13  # of the document's blocks, at least, whatever the template adds around it
EVENTS_TIMEOUT = 10.0  # seconds for a finished prefill's BlockStored to reach both routers


@pytest.fixture(scope="module")
def kv_routers(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    logs = tmp_path_factory.mktemp("kv-events-routers")
    started: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for name in ("first", "second"):
            process, url = start_router(stack, "kv-events", logs / f"{name}.log")
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


def test_requests_sharing_a_long_prefix_land_where_the_events_say_it_is_cached_through_either_router(
    stack: Stack, kv_routers: list[str]
) -> None:
    before = prefix_cache_hits(stack)
    for index, question in enumerate(QUESTIONS):
        ask_about(kv_routers[index % 2], DOCUMENT, question, fastchat=index % 2 == 1)
        wait_until(lambda: _known_to_all(kv_routers), EVENTS_TIMEOUT, "the document's blocks to reach both routers")
    grew = {url: hits - before[url] for url, hits in prefix_cache_hits(stack).items()}
    holder = max(grew, key=lambda url: grew[url])
    # The first request stored the document's blocks on one replica; every later one, through either router and
    # either API, went there and found them cached, as vLLM's own counter says.
    assert grew[holder] >= (len(QUESTIONS) - 1) * WHOLE_BLOCKS * 128, grew
    assert [grew[url] for url in stack.worker_urls if url != holder] == [0], grew
