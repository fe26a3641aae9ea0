"""`llm-ops bench routing`: prefix-cache-aware routing against load-only routing and vllm-router.

The workload is llm-d's shared-prefix one scaled to a small machine: `groups` contexts (a system prompt
and a document of about `document_tokens` tokens), each shared by `users_per_group` users who ask their own
`turns` questions, each turn's prompt holding the conversation so far. Users arrive every
`session_interval` seconds: the first user of every group, then the second, ..., so that a group comes back
after every other group's context was sent. When the contexts fit in the replicas' KV caches together but
not in one replica's, a router that spreads a group over the replicas makes each replica compute and hold
every context, and most requests recompute theirs.

Each contender runs the same workload on the same running replicas. Before it, every replica's prefix
cache is reset (the workers' service-only /reset_prefix_cache) and vLLM's counters read; after it, read
again: requests per replica and prefix-cache hit rates (`vllm:prefix_cache_hits` / `_queries`, in tokens)
come from the engines themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from httpx_sse import EventSource
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, computed_field

from llm_ops.access import (
    API_KEYS_VARIABLE,
    KV_EVENTS_ROUTE,
    RESET_PREFIX_CACHE,
    service_headers,
    service_key_from_environment,
)
from llm_ops.bench import report as bench_report
from llm_ops.bench.settings import RoutingBenchSettings
from llm_ops.bench.stats import SLO, Arrival, RequestRecord, Summary, summarize
from llm_ops.bench.vllm_server import LOOPBACK, free_port, running_server
from llm_ops.protocol.controller import WorkerList
from llm_ops.protocol.framing import iter_chunks
from llm_ops.router.watch import replica_url

SYSTEM_PROMPT = "You answer questions about the document below in one short sentence.\n\n"
NAMES = ["Ada", "Bram", "Cleo", "Dov", "Elin", "Finn", "Gaia", "Hugo", "Iris", "Jon", "Kai", "Lena"]
VERBS = ["found", "painted", "carried", "lost", "repaired", "sold", "counted", "measured", "hid", "cleaned"]
THINGS = ["blue boat", "old clock", "stone bridge", "red kite", "copper kettle", "tall ladder", "wool coat"]
PLACES = ["the harbour", "the mill", "the market", "the north gate", "the orchard", "the library", "the quay"]
QUESTIONS = ["Who {verb} the {thing}?", "Where was the {thing} on day {day}?", "What did {name} do near {place}?"]
NO_SLO = SLO(ttft_ms=math.inf, tpot_ms=math.inf)  # the comparison is by percentiles, not by goodput
Send = Callable[[str, list[dict[str, str]]], Awaitable[tuple[RequestRecord, str]]]


@dataclass(frozen=True)
class Session:
    group: int
    context: str  # the system prompt and the group's document
    questions: tuple[str, ...]


@dataclass(frozen=True)
class Contender:
    label: str
    policy: str
    by_vllm_router: bool
    fastchat: bool
    routers: int = 1  # instances of LLM Ops' router, each request to the next, as Traefik sends to its two


class ReplicaCounts(BaseModel):
    url: str
    requests: int
    prefix_cache_queries: int  # tokens
    prefix_cache_hits: int  # tokens

    @computed_field  # type: ignore[prop-decorator]
    @property
    def hit_rate(self) -> float | None:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else None


class ContenderResult(BaseModel):
    label: str
    summary: Summary
    replicas: list[ReplicaCounts]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def hit_rate(self) -> float | None:
        queries = sum(replica.prefix_cache_queries for replica in self.replicas)
        return sum(replica.prefix_cache_hits for replica in self.replicas) / queries if queries else None


class RoutingReport(BaseModel):
    settings: RoutingBenchSettings
    machine: bench_report.MachineInfo
    started_at: str
    context_tokens: int  # of the first group's context, as the worker's tokenizer counts
    workers: list[str]
    contenders: list[ContenderResult]


def contender(label: str) -> Contender:
    kind, _, policy = label.rpartition(":")
    if kind not in ("", "fastchat", "two-routers", "vllm-router"):
        raise ValueError(f"contender {label!r}: POLICY, fastchat:POLICY, two-routers:POLICY or vllm-router:POLICY")
    routers = 2 if kind == "two-routers" else 1
    return Contender(label, policy, by_vllm_router=kind == "vllm-router", fastchat=kind == "fastchat", routers=routers)


def sentence(rng: random.Random) -> str:
    name, verb, thing, place = rng.choice(NAMES), rng.choice(VERBS), rng.choice(THINGS), rng.choice(PLACES)
    return f"On day {rng.randrange(1, 400)}, {name} {verb} the {thing} near {place}."


def question(rng: random.Random) -> str:
    return rng.choice(QUESTIONS).format(
        verb=rng.choice(VERBS), thing=rng.choice(THINGS), day=rng.randrange(1, 400),
        name=rng.choice(NAMES), place=rng.choice(PLACES),
    )  # fmt: skip


def draw_sessions(settings: RoutingBenchSettings, sentences_per_document: int) -> list[Session]:
    """User 1 of every group, then user 2, ...: each with the group's context and questions of their own."""
    rng = random.Random(settings.seed)
    contexts = [
        SYSTEM_PROMPT + " ".join(sentence(rng) for _ in range(sentences_per_document)) for _ in range(settings.groups)
    ]
    return [
        Session(group, contexts[group], tuple(question(rng) for _ in range(settings.turns)))
        for _user in range(settings.users_per_group)
        for group in range(settings.groups)
    ]


async def token_count(http: httpx.AsyncClient, worker: str, model: str, text: str) -> int:
    answer = await http.post(f"{worker}/tokenize", json={"model": model, "prompt": text, "add_special_tokens": False})
    answer.raise_for_status()
    count: int = answer.json()["count"]
    return count


async def sentences_for(settings: RoutingBenchSettings, http: httpx.AsyncClient, worker: str) -> int:
    sample = " ".join(sentence(random.Random(settings.seed + 1)) for _ in range(50))
    per_sentence = await token_count(http, worker, settings.model, sample) / 50
    return max(1, round(settings.document_tokens / per_sentence))


async def workers_of(http: httpx.AsyncClient, controller_url: str, model: str) -> list[str]:
    listed = WorkerList.model_validate_json((await http.get(f"{controller_url}/list_workers")).content)
    return sorted(replica_url(worker.name) for worker in listed.workers if model in worker.model_names)


async def read_counts(http: httpx.AsyncClient, worker: str) -> ReplicaCounts:
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families((await http.get(f"{worker}/metrics")).text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return ReplicaCounts(
        url=worker,
        requests=int(totals.get("vllm:request_success_total", 0)),
        prefix_cache_queries=int(totals.get("vllm:prefix_cache_queries_total", 0)),
        prefix_cache_hits=int(totals.get("vllm:prefix_cache_hits_total", 0)),
    )


def counted_between(before: ReplicaCounts, after: ReplicaCounts) -> ReplicaCounts:
    return ReplicaCounts(
        url=after.url,
        requests=after.requests - before.requests,
        prefix_cache_queries=after.prefix_cache_queries - before.prefix_cache_queries,
        prefix_cache_hits=after.prefix_cache_hits - before.prefix_cache_hits,
    )


async def reset_prefix_caches(http: httpx.AsyncClient, workers: list[str], timeout: float = 120) -> None:
    """Every replica's cached prefixes forgotten; an engine still finishing a request refuses (409): again."""
    deadline = time.monotonic() + timeout
    for worker in workers:
        while (
            answer := await http.post(f"{worker}{RESET_PREFIX_CACHE}", headers=service_headers())
        ).status_code == 409:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{worker} kept running requests: its prefix cache could not be reset")
            await asyncio.sleep(0.5)
        answer.raise_for_status()


async def send_openai(
    http: httpx.AsyncClient, base: str, model: str, max_tokens: int, context: str, turns: list[dict[str, str]]
) -> tuple[RequestRecord, str]:
    body = {
        "model": model,
        "messages": [{"role": "system", "content": context}, *turns],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }

    async def pieces(response: httpx.Response) -> AsyncIterator[tuple[str, int]]:
        """vllm-router drops `continuous_usage_stats`: without usage, a chunk of text counts as a token."""
        chunks = 0
        async for event in EventSource(response).aiter_sse():
            if event.data == "[DONE]":
                return
            data = json.loads(event.data)
            text = "".join(choice["delta"].get("content") or "" for choice in data.get("choices") or [])
            chunks += bool(text)
            yield text, int((data.get("usage") or {}).get("completion_tokens", chunks))

    return await _timed(http, f"{base}/v1/chat/completions", body, pieces)


async def send_fastchat(
    http: httpx.AsyncClient, base: str, model: str, max_tokens: int, context: str, turns: list[dict[str, str]]
) -> tuple[RequestRecord, str]:
    body = {
        "model_identifier": model,
        "generation_mode": "chat",
        "system_message": context,
        "messages": [{"role": turn["role"], "text": turn["content"]} for turn in turns],
        "max_new_tokens": max_tokens,
        "temperature": 0,
        "stream_text": "delta",
    }

    async def pieces(response: httpx.Response) -> AsyncIterator[tuple[str, int]]:
        async for raw in iter_chunks(response.aiter_bytes()):
            chunk = json.loads(raw)
            if chunk.get("error_code", 0):
                raise RuntimeError(f"error_code {chunk['error_code']}: {chunk.get('text')!r}")
            yield chunk["text"], int(chunk["usage"]["completion_tokens"])

    return await _timed(http, f"{base}/api/{model}/worker_generate_stream", body, pieces)


async def _timed(
    http: httpx.AsyncClient,
    url: str,
    body: dict[str, object],
    pieces: Callable[[httpx.Response], AsyncIterator[tuple[str, int]]],
) -> tuple[RequestRecord, str]:
    """POST a streamed request; the answer's text, and when each of its tokens arrived."""
    start, arrivals, text, tokens, error = time.perf_counter(), list[Arrival](), "", 0, None
    try:
        async with http.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
            async for piece, total in pieces(response):
                text += piece
                if total > tokens:
                    arrivals.append(Arrival(time.perf_counter(), total - tokens))
                    tokens = total
    except (httpx.HTTPError, RuntimeError, ValueError, KeyError) as failure:
        error = f"{type(failure).__name__}: {failure}"
    return RequestRecord(start, time.perf_counter(), tuple(arrivals), tokens, error), text


async def run_session(session: Session, send: Send, delay: float) -> list[RequestRecord]:
    await asyncio.sleep(delay)
    records: list[RequestRecord] = []
    turns: list[dict[str, str]] = []
    for asked in session.questions:
        turns.append({"role": "user", "content": asked})
        record, answer = await send(session.context, turns)
        records.append(record)
        turns.append({"role": "assistant", "content": answer})
    return records


async def kv_event_sources(http: httpx.AsyncClient, workers: list[str], model: str) -> list[str]:
    """vllm-router's `kv_aware` flags: where each worker's engine publishes its KV-cache events (the worker's
    `GET /kv_events`; the stack must run with `--kv-events-port`) and its block size (vLLM's cache config)."""
    flags, block_size = [], "16"
    for worker in workers:
        answer = await http.get(f"{worker}{KV_EVENTS_ROUTE}", headers=service_headers())
        answer.raise_for_status()
        published, host = answer.json(), httpx.URL(worker).host
        flags += ["--kv-event-source", f"{worker}=tcp://{host}:{published['port']}"]
        flags += ["--kv-event-replay-source", f"{worker}=tcp://{host}:{published['replay_port']}"]
        for family in text_string_to_metric_families((await http.get(f"{worker}/metrics")).text):
            if family.name == "vllm:cache_config_info":
                block_size = family.samples[0].labels["block_size"]
    return [*flags, "--kv-event-block-size", block_size, "--kv-event-model", model]


async def router_command(
    http: httpx.AsyncClient, chosen: Contender, settings: RoutingBenchSettings, workers: list[str], port: int
) -> list[str]:
    if chosen.by_vllm_router:
        keys = ["--api-key", key] if (key := service_key_from_environment()) else []  # what workers accept
        events = await kv_event_sources(http, workers, settings.model) if chosen.policy == "kv_aware" else []
        return [
            str(settings.vllm_router), "--host", LOOPBACK, "--port", str(port), "--policy", chosen.policy,
            "--worker-urls", *workers, "--request-timeout-secs", str(int(settings.request_timeout)), *keys, *events,
        ]  # fmt: skip
    return [
        sys.executable, "-m", "llm_ops", "router", "--host", LOOPBACK, "--port", str(port),
        "--controller-address", settings.controller_url, "--routing-policy", chosen.policy,
    ]  # fmt: skip


async def wait_until_routing(
    http: httpx.AsyncClient, base: str, chosen: Contender, workers: list[str], timeout: float
) -> None:
    """LLM Ops' router: until it has admitted every replica (vllm-router checks its workers before it serves)."""
    deadline = time.monotonic() + timeout
    while not chosen.by_vllm_router:
        replicas = (await http.get(f"{base}/replicas")).json()["replicas"]
        if {replica["url"] for replica in replicas if replica["admitted"]} >= set(workers):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the router did not admit {workers} within {timeout:.0f} s")
        await asyncio.sleep(0.2)


async def run_contender(
    chosen: Contender, settings: RoutingBenchSettings, sessions: list[Session], workers: list[str], log_dir: Path
) -> ContenderResult:
    timeout = httpx.Timeout(settings.request_timeout, connect=10)
    async with httpx.AsyncClient(timeout=timeout, trust_env=False) as http:
        await reset_prefix_caches(http, workers)
        before = [await read_counts(http, worker) for worker in workers]
        environment = {name: value for name, value in os.environ.items() if name != API_KEYS_VARIABLE}
        async with contextlib.AsyncExitStack() as routers:
            bases = []
            for instance in range(chosen.routers):
                port = free_port()
                bases.append(f"http://{LOOPBACK}:{port}")
                log_file = log_dir / f"{chosen.label.replace(':', '-')}-{instance}.log"
                command = await router_command(http, chosen, settings, workers, port)
                await routers.enter_async_context(
                    running_server(command, environment, bases[-1], log_file, settings.start_timeout)
                )
                await wait_until_routing(http, bases[-1], chosen, workers, settings.start_timeout)
            sender, turn = send_fastchat if chosen.fastchat else send_openai, itertools.count()

            async def send(context: str, turns: list[dict[str, str]]) -> tuple[RequestRecord, str]:
                base = bases[next(turn) % len(bases)]
                return await sender(http, base, settings.model, settings.max_new_tokens, context, turns)

            start = time.perf_counter()
            runs = [run_session(s, send, index * settings.session_interval) for index, s in enumerate(sessions)]
            records = [record for session in await asyncio.gather(*runs) for record in session]
            wall = time.perf_counter() - start
        after = [await read_counts(http, worker) for worker in workers]
    replicas = [counted_between(b, a) for b, a in zip(before, after, strict=True)]
    return ContenderResult(label=chosen.label, summary=summarize(records, wall, NO_SLO), replicas=replicas)


def comparisons(results: list[ContenderResult]) -> list[str]:
    """The issue's questions, answered from this run: the best policy of LLM Ops' router on /v1 against
    round-robin and against vllm-router's best, and the gain on FastChat's route against /v1's."""
    by_label = {result.label: result for result in results}
    ours = [r for r in results if not r.label.startswith(("fastchat:", "vllm-router:")) and _p90(r) is not None]
    theirs = [r for r in results if r.label.startswith("vllm-router:") and _p90(r) is not None]
    if not ours:
        return []
    best = min(ours, key=lambda result: _p90(result) or math.inf)
    lines = [f"best of LLM Ops' policies on /v1 (lowest TTFT p90): {best.label}"]
    for other in [by_label.get("round-robin"), min(theirs, key=lambda r: _p90(r) or math.inf, default=None)]:
        if other is not None and other is not best:
            lines.append(f"  {best.label} vs {other.label}: {_ratios(best, other)}")
    fastchat_best, fastchat_base = by_label.get(f"fastchat:{best.label}"), by_label.get("fastchat:round-robin")
    if fastchat_best and fastchat_base and "round-robin" in by_label and best.label != "round-robin":
        ratios = _ratios(fastchat_best, fastchat_base)
        lines.append(f"  FastChat's route, {fastchat_best.label} vs {fastchat_base.label}: {ratios}")
    return lines


def _p90(result: ContenderResult) -> float | None:
    return result.summary.ttft_ms.p90


def _ratios(better: ContenderResult, other: ContenderResult) -> str:
    throughput = better.summary.output_tokens_per_s / other.summary.output_tokens_per_s
    return f"{throughput:.2f}x output tokens/s, TTFT p90 {(_p90(other) or 0) / (_p90(better) or math.inf):.1f}x lower"


def table(results: list[ContenderResult]) -> str:
    header = (
        f"{'contender':<26} {'ok':>4} {'fail':>4} {'out tok/s':>9} {'TTFT p50':>9} {'p90':>8} {'p99':>8} "
        f"{'e2e p50':>8} {'p90':>8} {'hit rate':>8}  requests per replica (hit rate)"
    )
    return "\n".join([header, *(_row(result) for result in results)])


def _row(result: ContenderResult) -> str:
    summary = result.summary
    per_replica = ", ".join(f"{replica.requests} ({_rate(replica.hit_rate)})" for replica in result.replicas)
    return (
        f"{result.label:<26} {summary.completed:>4} {summary.failed:>4} {summary.output_tokens_per_s:>9.1f} "
        f"{_s(summary.ttft_ms.p50):>9} {_s(summary.ttft_ms.p90):>8} {_s(summary.ttft_ms.p99):>8} "
        f"{_s(summary.e2e_ms.p50):>8} {_s(summary.e2e_ms.p90):>8} {_rate(result.hit_rate):>8}  {per_replica}"
    )


def _s(milliseconds: float | None) -> str:
    return "-" if milliseconds is None else f"{milliseconds / 1000:.2f} s"


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.2f}"


def draw(report: RoutingReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    panels: list[tuple[str, Callable[[ContenderResult], float | None]]] = [
        ("output tokens/s", lambda result: result.summary.output_tokens_per_s),
        ("TTFT p90 (s)", lambda result: (_p90(result) or 0) / 1000),
        ("prefix-cache hit rate", lambda result: result.hit_rate),
    ]
    labels = [result.label for result in report.contenders]
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), constrained_layout=True)
    for axis, (title, value) in zip(axes, panels, strict=True):
        axis.bar(labels, [value(result) or 0 for result in report.contenders])
        axis.set_title(title)
        axis.tick_params(axis="x", labelrotation=45)
        axis.grid(True, axis="y", alpha=0.3)
    figure.suptitle(
        f"{report.settings.groups} groups x {report.settings.users_per_group} users x {report.settings.turns} turns, "
        f"{report.context_tokens}-token contexts, {len(report.workers)} replicas"
    )
    figure.savefig(path, dpi=100)
    plt.close(figure)


async def bench_routing(settings: RoutingBenchSettings) -> RoutingReport:
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S")
    chosen = [contender(label) for label in settings.contenders]
    async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
        workers = await workers_of(http, settings.controller_url, settings.model)
        if len(workers) < 2:
            raise RuntimeError(f"{settings.model} has {len(workers)} replica(s): start the stack with --replicas 2")
        sessions = draw_sessions(settings, await sentences_for(settings, http, workers[0]))
        context_tokens = await token_count(http, workers[0], settings.model, sessions[0].context)
    log_dir = _output(settings, started_at).with_suffix("")
    log_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for one in chosen:
        print(f"{one.label}: {len(sessions)} users, {len(sessions) * settings.turns} requests", file=sys.stderr)
        results.append(await run_contender(one, settings, sessions, workers, log_dir))
    return RoutingReport(
        settings=settings, machine=bench_report.machine_info(), started_at=started_at,
        context_tokens=context_tokens, workers=workers, contenders=results,
    )  # fmt: skip


def _output(settings: RoutingBenchSettings, started_at: str) -> Path:
    return settings.output or Path("benchmarks/results") / f"routing-{started_at.replace(':', '')}.json"


def run_routing_bench(settings: RoutingBenchSettings) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would hide the progress
    report = asyncio.run(bench_routing(settings))
    print(table(report.contenders))
    print("\n".join(comparisons(report.contenders)))
    path = _output(settings, report.started_at)
    path.write_text(report.model_dump_json(indent=2))
    draw(report, path.with_suffix(".png"))
    print(f"written: {path} and {path.with_suffix('.png')}")
    failed = sum(result.summary.failed for result in report.contenders)
    return 1 if failed else 0
