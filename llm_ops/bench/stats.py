"""What one level of load measured: pure functions over request timings, and the result models.

Times are seconds from `time.perf_counter()`; the summaries report milliseconds. Failed requests are
counted, and left out of every latency and of the output tokens.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel


@dataclass(frozen=True)
class Arrival:
    """A chunk of the stream that brought `tokens` new output tokens at `time`."""

    time: float
    tokens: int


@dataclass(frozen=True)
class RequestRecord:
    start: float
    end: float
    arrivals: tuple[Arrival, ...]
    output_tokens: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.arrivals)


@dataclass(frozen=True)
class SLO:
    ttft_ms: float
    tpot_ms: float
    e2e_ms: float | None = None


class Percentiles(BaseModel):
    p50: float | None
    p90: float | None
    p99: float | None


class Summary(BaseModel):
    """One target at one level of concurrency (over all its rounds)."""

    requests: int
    completed: int
    failed: int
    errors: list[str]  # the distinct error messages, first few
    wall_s: float
    output_tokens: int
    mean_output_tokens: float | None
    output_tokens_per_s: float
    requests_per_s: float
    good_requests: int
    goodput_per_s: float
    ttft_ms: Percentiles
    itl_ms: Percentiles
    tpot_ms: Percentiles
    e2e_ms: Percentiles


def percentile(values: Sequence[float], p: int) -> float | None:
    """The p-th percentile, interpolating between the closest ranks (`statistics.quantiles`' inclusive
    method, numpy's default); None for no values."""
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def percentiles_ms(seconds: Sequence[float]) -> Percentiles:
    def ms(p: int) -> float | None:
        value = percentile(seconds, p)
        return None if value is None else value * 1000

    return Percentiles(p50=ms(50), p90=ms(90), p99=ms(99))


def ttft(record: RequestRecord) -> float:
    return record.arrivals[0].time - record.start


def e2e(record: RequestRecord) -> float:
    return record.end - record.start


def inter_token_latencies(record: RequestRecord) -> list[float]:
    """The gap before each chunk after the first, shared among the tokens it brought."""
    gaps: list[float] = []
    for previous, current in zip(record.arrivals, record.arrivals[1:], strict=False):
        gaps += [(current.time - previous.time) / current.tokens] * current.tokens
    return gaps


def tpot(record: RequestRecord) -> float | None:
    """Time per output token after the first; None for a one-token answer."""
    if record.output_tokens < 2:
        return None
    return (e2e(record) - ttft(record)) / (record.output_tokens - 1)


def meets(record: RequestRecord, slo: SLO) -> bool:
    per_token = tpot(record)
    return (
        record.ok
        and ttft(record) * 1000 <= slo.ttft_ms
        and (per_token is None or per_token * 1000 <= slo.tpot_ms)
        and (slo.e2e_ms is None or e2e(record) * 1000 <= slo.e2e_ms)
    )


def summarize(records: Sequence[RequestRecord], wall_s: float, slo: SLO) -> Summary:
    done = [record for record in records if record.ok]
    failed = [record for record in records if not record.ok]
    tokens = sum(record.output_tokens for record in done)
    good = sum(meets(record, slo) for record in done)
    per_token = [value for value in map(tpot, done) if value is not None]
    return Summary(
        requests=len(records),
        completed=len(done),
        failed=len(failed),
        errors=sorted({record.error or "no output" for record in failed})[:5],
        wall_s=wall_s,
        output_tokens=tokens,
        mean_output_tokens=tokens / len(done) if done else None,
        output_tokens_per_s=_rate(tokens, wall_s),
        requests_per_s=_rate(len(done), wall_s),
        good_requests=good,
        goodput_per_s=_rate(good, wall_s),
        ttft_ms=percentiles_ms([ttft(record) for record in done]),
        itl_ms=percentiles_ms([gap for record in done for gap in inter_token_latencies(record)]),
        tpot_ms=percentiles_ms(per_token),
        e2e_ms=percentiles_ms([e2e(record) for record in done]),
    )


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0
