"""Policy `prefix` on the session stack's two replicas: requests that share a long prefix, through FastChat's
route and OpenAI's alike, land on one replica, and vLLM's prefix cache there serves the prefix again.

The stack's own router routes by `prefix` too (the default), but other tests' requests fill its memory; this
module starts a router of its own, `llm-ops router --routing-policy prefix`, over the same controller and
replicas, and sends to it directly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import Stack, ask_about, prefix_cache_hits, start_router

pytestmark = pytest.mark.integration
# About 1,900 tokens: 14 of the CPU build's 128-token KV blocks, well under one replica's cache.
DOCUMENT = " ".join(f"Stone {i} lies by the river, {i * 7 % 13} steps from the mill." for i in range(120))
QUESTIONS = ["Which stone is first?", "Where is the mill?", "How many stones are there?", "Name one stone."]


@pytest.fixture(scope="module")
def prefix_router(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = start_router(stack, "prefix", tmp_path_factory.mktemp("prefix-router") / "router.log")
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_requests_sharing_a_long_prefix_land_on_one_replica_whose_prefix_cache_hits_grow(
    stack: Stack, prefix_router: str
) -> None:
    before = prefix_cache_hits(stack)
    for index, question in enumerate(QUESTIONS):
        ask_about(prefix_router, DOCUMENT, question, fastchat=index % 2 == 0)
    grew = {url: hits - before[url] for url, hits in prefix_cache_hits(stack).items()}
    holder = max(grew, key=lambda url: grew[url])
    # The document's whole blocks, hit by every request after the first.
    assert grew[holder] >= (len(QUESTIONS) - 1) * 13 * 128, grew
    assert [grew[url] for url in stack.worker_urls if url != holder] == [0], grew
