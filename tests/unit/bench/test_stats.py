"""`llm-ops bench`'s statistics (llm_ops/bench/stats.py): percentiles, latencies, goodput, failures."""

from __future__ import annotations

import pytest

from llm_ops.bench.stats import SLO, Arrival, RequestRecord, inter_token_latencies, percentile, summarize, tpot

SLOW = SLO(ttft_ms=500, tpot_ms=100)


def record(start: float, arrivals: list[tuple[float, int]], end: float, error: str | None = None) -> RequestRecord:
    chunks = tuple(Arrival(time, tokens) for time, tokens in arrivals)
    return RequestRecord(start, end, chunks, sum(tokens for _, tokens in arrivals), error)


def test_percentiles_interpolate_between_ranks_and_are_none_without_values() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([float(value) for value in range(101)], 90) == 90
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert percentile([], 50) is None


def test_inter_token_latency_shares_a_chunks_gap_among_its_tokens() -> None:
    timed = record(0.0, [(0.1, 1), (0.3, 2), (0.4, 1), (0.8, 4)], 0.8)
    assert inter_token_latencies(timed) == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])


def test_time_per_output_token_excludes_the_first_token() -> None:
    assert tpot(record(0.0, [(0.2, 1), (0.7, 5), (1.2, 5)], 1.2)) == pytest.approx(0.1)
    assert tpot(record(0.0, [(0.2, 1)], 0.2)) is None


def test_goodput_counts_only_completed_requests_within_every_slo() -> None:
    records = [
        record(0.0, [(0.1, 1), (0.2, 9)], 0.2),  # good
        record(0.0, [(0.9, 1), (1.0, 9)], 1.0),  # TTFT 900 ms > 500
        record(0.0, [(0.1, 1), (2.0, 9)], 2.0),  # TPOT 211 ms > 100
        record(0.0, [(0.1, 1)], 50.0, error="HTTP 500"),
    ]
    summary = summarize(records, wall_s=2.0, slo=SLOW)
    assert (summary.good_requests, summary.goodput_per_s) == (1, 0.5)
    assert summary.requests_per_s == 1.5
    assert summarize(records, wall_s=2.0, slo=SLO(500, 100, e2e_ms=100)).good_requests == 0


def test_failed_requests_are_counted_but_left_out_of_latencies_and_tokens() -> None:
    records = [
        record(0.0, [(0.1, 1), (0.2, 3)], 0.2),
        record(0.0, [(0.3, 1), (0.5, 3)], 0.5),
        record(0.0, [(9.0, 7)], 60.0, error="ReadTimeout: "),
        record(0.0, [], 0.1),  # no token at all is a failure too
    ]
    summary = summarize(records, wall_s=1.0, slo=SLOW)
    assert (summary.requests, summary.completed, summary.failed) == (4, 2, 2)
    assert summary.errors == ["ReadTimeout: ", "no output"]
    assert summary.output_tokens == 8 and summary.output_tokens_per_s == 8.0
    assert summary.ttft_ms.p99 == pytest.approx(298) and summary.e2e_ms.p50 == pytest.approx(350)
