"""`llm-ops bench routing`'s workload and verdicts (llm_ops/bench/routing.py); the run itself is a benchmark
(docs/benchmarks.md), not a test."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from llm_ops.bench.routing import (
    NO_SLO,
    ContenderResult,
    ReplicaCounts,
    comparisons,
    contender,
    counted_between,
    draw_sessions,
    router_command,
    table,
)
from llm_ops.bench.settings import RoutingBenchSettings
from llm_ops.bench.stats import Arrival, RequestRecord, summarize

WORKERS = ["http://127.0.0.1:21002", "http://127.0.0.1:21003"]


def test_a_contender_is_our_routers_policy_on_v1_on_fastchats_route_or_in_two_instances_or_vllm_routers() -> None:
    ours, fastchat, theirs = (
        contender("prefix"),
        contender("fastchat:round-robin"),
        contender("vllm-router:cache_aware"),
    )
    assert ours.policy == "prefix" and not ours.fastchat and not ours.by_vllm_router
    assert fastchat.fastchat and fastchat.policy == "round-robin" and not fastchat.by_vllm_router
    assert theirs.by_vllm_router and theirs.policy == "cache_aware" and not theirs.fastchat
    assert contender("two-routers:prefix").routers == 2 and ours.routers == 1
    with pytest.raises(ValueError, match="POLICY"):
        contender("sglang:cache_aware")


def published_kv_events(request: httpx.Request) -> httpx.Response:
    """A worker of `llm-ops up --kv-events-port`: where its engine publishes, and vLLM's cache config."""
    if request.url.path == "/kv_events":
        port = 5557 if request.url.port == 21002 else 5559
        return httpx.Response(200, json={"port": port, "replay_port": port + 1, "topic": "kv"})
    return httpx.Response(200, text='vllm:cache_config_info{block_size="128",model_name="m"} 1.0\n')


@pytest.mark.anyio
async def test_each_contender_runs_its_router_over_the_same_workers() -> None:
    settings = RoutingBenchSettings(vllm_router=Path("/opt/vllm-router"))
    async with httpx.AsyncClient(transport=httpx.MockTransport(published_kv_events)) as http:
        ours = await router_command(http, contender("fastchat:prefix"), settings, WORKERS, 9000)
        theirs = await router_command(http, contender("vllm-router:cache_aware"), settings, WORKERS, 9001)
    assert ours[-4:] == ["--controller-address", "http://127.0.0.1:21001", "--routing-policy", "prefix"]
    assert theirs[0] == "/opt/vllm-router" and theirs[theirs.index("--policy") + 1] == "cache_aware"
    assert theirs[theirs.index("--worker-urls") + 1 :][:2] == WORKERS
    assert "--kv-event-source" not in theirs


@pytest.mark.anyio
async def test_vllm_routers_kv_aware_follows_each_workers_kv_events_with_the_engines_block_size() -> None:
    settings = RoutingBenchSettings(vllm_router=Path("/opt/vllm-router"))
    async with httpx.AsyncClient(transport=httpx.MockTransport(published_kv_events)) as http:
        command = await router_command(http, contender("vllm-router:kv_aware"), settings, WORKERS, 9002)
    flags = list(zip(command, command[1:], strict=False))
    assert ("--kv-event-source", "http://127.0.0.1:21002=tcp://127.0.0.1:5557") in flags
    assert ("--kv-event-replay-source", "http://127.0.0.1:21003=tcp://127.0.0.1:5560") in flags
    assert ("--kv-event-block-size", "128") in flags


def test_every_user_of_a_group_shares_its_context_and_a_group_comes_back_after_every_other() -> None:
    settings = RoutingBenchSettings(groups=3, users_per_group=2, turns=4)
    sessions = draw_sessions(settings, sentences_per_document=40)
    assert [session.group for session in sessions] == [0, 1, 2, 0, 1, 2]
    assert sessions[0].context == sessions[3].context != sessions[1].context
    assert all(len(session.questions) == 4 for session in sessions)
    assert draw_sessions(settings, 40) == sessions  # the same seed draws the same workload


def result(label: str, ttft_s: float, tokens: int, wall_s: float = 10.0) -> ContenderResult:
    records = [RequestRecord(0.0, ttft_s + 0.1, (Arrival(ttft_s, 1), Arrival(ttft_s + 0.1, tokens - 1)), tokens)]
    replicas = [ReplicaCounts(url=WORKERS[0], requests=1, prefix_cache_queries=100, prefix_cache_hits=90)]
    return ContenderResult(label=label, summary=summarize(records, wall_s, NO_SLO), replicas=replicas)


def test_the_comparisons_take_the_best_of_our_policies_against_round_robin_vllm_router_and_on_fastchats_route() -> None:
    results = [
        result("round-robin", ttft_s=20.0, tokens=100),
        result("prefix", ttft_s=1.0, tokens=300),
        result("vllm-router:cache_aware", ttft_s=2.0, tokens=250),
        result("fastchat:round-robin", ttft_s=19.0, tokens=100),
        result("fastchat:prefix", ttft_s=1.0, tokens=290),
    ]
    lines = comparisons(results)
    assert lines[0].endswith(": prefix")
    assert lines[1] == "  prefix vs round-robin: 3.00x output tokens/s, TTFT p90 20.0x lower"
    assert lines[2] == "  prefix vs vllm-router:cache_aware: 1.20x output tokens/s, TTFT p90 2.0x lower"
    assert (
        lines[3]
        == "  FastChat's route, fastchat:prefix vs fastchat:round-robin: 2.90x output tokens/s, TTFT p90 19.0x lower"
    )


def test_the_table_shows_each_contenders_hit_rate_and_requests_per_replica() -> None:
    row = table([result("prefix", ttft_s=1.0, tokens=300)]).splitlines()[1]
    assert row.startswith("prefix") and "0.90" in row and row.endswith("1 (0.90)")


def test_a_replicas_counts_are_what_the_contender_added() -> None:
    before = ReplicaCounts(url=WORKERS[0], requests=5, prefix_cache_queries=1000, prefix_cache_hits=100)
    after = ReplicaCounts(url=WORKERS[0], requests=9, prefix_cache_queries=3000, prefix_cache_hits=1600)
    assert counted_between(before, after).hit_rate == 0.75
