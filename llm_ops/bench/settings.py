"""The flags of `llm-ops bench`: what to send, to which targets, how hard, and what counts as good."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from llm_ops.settings import DEFAULT_MODEL_NAME, DEFAULT_SERVICE

TargetKey = Literal["a", "b", "c", "d", "e", "f"]
TARGET_NAMES: dict[TargetKey, str] = {
    "a": "stack",
    "b": "worker",
    "c": "vllm",
    "d": "v1",
    "e": "model-v1",
    "f": "worker-v1",
}
ALL_TARGETS: list[TargetKey] = ["a", "b", "c", "d", "e", "f"]  # pydantic copies a list default for each instance


class BenchSettings(BaseModel):
    """A load generator comparing, interleaved, the stack through Traefik over TLS, (a) FastChat's
    /api/<model>/worker_generate_stream, (d) /v1 (the router) and (e) /api/<model>/v1, with the same
    worker's own port, (b) its FastChat route and (f) its /v1, and (c) vLLM's own OpenAI server with the
    same flags."""

    targets: list[TargetKey] = Field(
        ALL_TARGETS,
        description="which targets to run: a (stack, FastChat), b (worker), c (vLLM), d (stack, /v1), "
        "e (stack, /api/<model>/v1), f (worker, /v1)",
    )
    stack_url: str = Field("https://localhost:8443", description="targets a, d, e: the front door (Traefik, HTTPS)")
    worker_url: str = Field("http://127.0.0.1:21002", description="targets b, f: the worker, directly")
    vllm_url: str | None = Field(
        None, description="target c: an already running vLLM OpenAI server; unset: start one on loopback"
    )
    vllm_port: int | None = Field(None, ge=1, le=65535, description="port of the vLLM server started; unset: free")
    vllm_start_timeout: float = Field(600, gt=0, description="seconds to wait for the vLLM server's /health")
    ca_file: Path = Field(Path(".llm-ops/tls/ca.pem"), description="the CA that signed the stack's certificate")
    api_key: str | None = Field(
        None,
        description="sent as 'Authorization: Bearer' to a, b, d, e, f; unset: the first of LLM_OPS_API_KEYS, if any",
    )
    compose_file: Path = Field(Path("docker-compose.yml"), description="the deployment the stack runs")
    service: str = Field(DEFAULT_SERVICE, description="the model service whose model and engine settings vLLM gets")
    worker_flags: str = Field(
        "",
        description="worker flags given to `llm-ops up`, after the service's own: --worker-flags='--enforce-eager'",
    )
    model: str | None = Field(None, description="the model name to request; unset: the service's first served name")
    prompt: str = Field("Once upon a time, in a small village by the sea,", description="the completion prompt")
    max_new_tokens: int = Field(128, ge=1, description="output tokens asked for per request (greedy)")
    stream_text: Literal["delta", "cumulative"] = Field(
        "delta", description="worker stream mode: delta (new text per chunk) or cumulative (FastChat's)"
    )
    concurrency: list[int] = Field([1, 8, 32], description="requests in flight, per level")
    rounds: int = Field(1, ge=1, description="times each target runs each level; the order rotates")
    requests_per_level: int | None = Field(
        None, ge=1, description="measured requests per target, level and round; unset: max(4, 2 * concurrency)"
    )
    warmup: int = Field(1, ge=1, description="requests per target before measuring (the first checks it answers)")
    slo_ttft_ms: float = Field(5000, gt=0, description="goodput: time to first token at most this")
    slo_tpot_ms: float = Field(500, gt=0, description="goodput: time per output token at most this")
    slo_e2e_ms: float | None = Field(None, gt=0, description="goodput: end-to-end latency at most this; unset: any")
    request_timeout: float = Field(600, gt=0, description="seconds a request may take")
    output: Path | None = Field(
        None, description="the JSON result (a PNG plot goes beside it); unset: benchmarks/results/bench-<time>.json"
    )
    progress: bool = Field(True, description="show a progress bar per target and level")
    vllm_bench_prompts: int = Field(
        0, ge=0, description="then vLLM's own benchmark client (random prompts) against c, d and e; 0: skip"
    )
    vllm_bench_concurrency: int = Field(8, ge=1, description="vLLM's benchmark client: requests in flight")

    def requests_at(self, concurrency: int) -> int:
        return self.requests_per_level or max(4, 2 * concurrency)


class RoutingBenchSettings(BaseModel):
    """`llm-ops bench routing`: groups of users sharing a long context (a system prompt and a document), each
    asking their own questions over several turns, sent through each contender in turn on the same running
    replicas (`llm-ops up --replicas 2`), whose prefix caches are reset in between. A contender is a policy of
    LLM Ops' router on /v1 (`prefix`, `least-loaded`, ...), the same on FastChat's route (`fastchat:prefix`), or
    vllm-router's (`vllm-router:cache_aware`) pointed at the same workers."""

    contenders: list[str] = Field(
        ["round-robin", "least-loaded", "prefix", "vllm-router:cache_aware", "fastchat:round-robin", "fastchat:prefix"],
        description="in this order: POLICY (LLM Ops' router, /v1/chat/completions), fastchat:POLICY (its "
        "/api/<model>/worker_generate_stream), two-routers:POLICY (two instances of it, taken in turn), "
        "vllm-router:POLICY (vllm-router, /v1/chat/completions). `kv-events` and `vllm-router:kv_aware` read the "
        "engines' KV-cache events: start the stack with --kv-events-port",
    )
    controller_url: str = Field("http://127.0.0.1:21001", description="the running stack's controller")
    model: str = Field(DEFAULT_MODEL_NAME, description="the model the replicas serve")
    vllm_router: Path = Field(
        Path("vllm-router"), description="vllm-router's binary (PyPI vllm-router, in a venv of its own)"
    )
    groups: int = Field(12, ge=1, description="contexts shared by a group of users")
    users_per_group: int = Field(2, ge=1, description="users of each group, each with their own questions")
    turns: int = Field(3, ge=1, description="questions per user; each turn's prompt holds the conversation so far")
    document_tokens: int = Field(2500, ge=1, description="tokens of each group's document, about")
    max_new_tokens: int = Field(24, ge=1, description="tokens of each answer")
    session_interval: float = Field(
        2.0, gt=0, description="seconds between users' arrivals (user 1 of every group, then user 2, ...)"
    )
    seed: int = Field(0, description="the documents and questions drawn")
    request_timeout: float = Field(900, gt=0, description="seconds a request may take")
    start_timeout: float = Field(60, gt=0, description="seconds for a contender's router to admit every replica")
    output: Path | None = Field(
        None, description="the JSON result (a PNG goes beside it); unset: benchmarks/results/routing-<time>.json"
    )
