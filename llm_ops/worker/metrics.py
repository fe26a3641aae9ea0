"""A worker's Prometheus metrics (prometheus_client), served at /metrics, labelled by model.

Named after what vLLM's own server exports (time to first token, inter-token latency, end-to-end
latency, running and waiting requests, prompt and generated tokens), under `llm_ops_`, so that one
dashboard reads both. Each worker has its own registry: tests can run several in one process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from llm_ops.engine import Delta

__all__ = ["CONTENT_TYPE_LATEST", "RequestTimer", "WorkerMetrics"]

# Seconds. Small models on a GPU answer in milliseconds; big ones on a busy CPU in minutes.
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
INTER_TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
REQUEST_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0, 600.0)


@dataclass
class WorkerMetrics:
    model: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        """Every metric but `requests` has only the model label, fixed per worker: it is bound here, once,
        and not looked up again on every token."""
        registry, model = self.registry, self.model
        self.requests = Counter(
            "llm_ops_requests",
            "Requests by generation mode and outcome (finished, error, aborted, refused, overloaded)",
            ["model", "mode", "outcome"],
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "llm_ops_time_to_first_token_seconds",
            "From the request's arrival (queueing included) to its first generated token",
            ["model"],
            buckets=FIRST_TOKEN_BUCKETS,
            registry=registry,
        ).labels(model)
        self.inter_token_latency = Histogram(
            "llm_ops_inter_token_latency_seconds",
            "Between consecutive generated tokens of a request",
            ["model"],
            buckets=INTER_TOKEN_BUCKETS,
            registry=registry,
        ).labels(model)
        self.request_latency = Histogram(
            "llm_ops_e2e_request_latency_seconds",
            "From the request's arrival to its last token (or its end)",
            ["model"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        ).labels(model)
        self.prompt_tokens = Counter("llm_ops_prompt_tokens", "Prompt tokens", ["model"], registry=registry).labels(
            model
        )
        self.generation_tokens = Counter(
            "llm_ops_generation_tokens", "Generated tokens", ["model"], registry=registry
        ).labels(model)
        self.running = Gauge("llm_ops_requests_running", "Requests generating", ["model"], registry=registry).labels(
            model
        )
        self.waiting = Gauge(
            "llm_ops_requests_waiting", "Requests waiting for a running slot", ["model"], registry=registry
        ).labels(model)

    def count(self, mode: str, outcome: str) -> None:
        """One request more that ended with `outcome`: in the engine (`RequestTimer.end`) or before it."""
        self.requests.labels(self.model, mode, outcome).inc()

    def timer(self, mode: str, prompt_tokens: int, received_at: float) -> RequestTimer:
        return RequestTimer(self, mode, received_at, prompt_tokens)

    def render(self, running: int, waiting: int) -> bytes:
        """The exposition text, with the admission counts as they are now."""
        self.running.set(running)
        self.waiting.set(waiting)
        return generate_latest(self.registry)


@dataclass
class RequestTimer:
    """Times one request's deltas; `end` records the outcome once."""

    metrics: WorkerMetrics
    mode: str
    received_at: float
    prompt_tokens: int
    last_token_at: float | None = None
    generated: int = 0

    def delta(self, delta: Delta) -> None:
        now = time.perf_counter()
        metrics = self.metrics
        if self.last_token_at is None:
            metrics.time_to_first_token.observe(now - self.received_at)
        elif delta.token_count:
            gap = (now - self.last_token_at) / delta.token_count
            for _ in range(delta.token_count):
                metrics.inter_token_latency.observe(gap)
        self.last_token_at = now
        self.generated += delta.token_count

    def end(self, outcome: str) -> None:
        metrics = self.metrics
        metrics.count(self.mode, outcome)
        metrics.request_latency.observe(time.perf_counter() - self.received_at)
        metrics.prompt_tokens.inc(self.prompt_tokens)
        metrics.generation_tokens.inc(self.generated)
