"""Soak test: mixed traffic through the front door for a while; errors, latencies and memory growth.

Start a stack (with keys, as in production), then point this at it:

    LLM_OPS_API_KEYS=sk-soak .venv/bin/llm-ops up --replicas 2 &
    LLM_OPS_API_KEY=sk-soak .venv/bin/python benchmarks/soak.py --duration 600 --concurrency 32 \\
        --output soak.json

`--concurrency` clients loop until `--duration` is over, each request picked at random among: a
worker chat (/api/<model>/worker_generate), a worker chat stream, an OpenAI chat completion and an
OpenAI streamed completion, with 16 to 128 new tokens. Every process of the stack (Traefik, the
controller, the OpenAI API, the workers and their vLLM engine processes) is sampled for resident
memory every 10 s; the report compares the first sample after a one-minute warm-up with the last.
Not part of the test suite: it takes as long as you ask, and its numbers go to docs/operations.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import ssl
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

MODEL = "SmolLM2-135M-Instruct"
QUESTIONS = [
    "What is the capital of France?",
    "Tell me a long story about a dragon who learns to fly.",
    "Explain in a few sentences how a bicycle stays upright.",
    "Write a short poem about the sea.",
]
STACK_PROCESSES = ("traefik", "llm-ops", "llm_ops", "vllm", "VLLM")
WARM_UP_SECONDS = 60.0
MEMORY_EVERY_SECONDS = 10.0


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=dict)  # kind -> end-to-end seconds
    first_token: dict[str, list[float]] = field(default_factory=dict)  # streaming kind -> seconds
    outcomes: Counter[str] = field(default_factory=Counter)

    def record(self, kind: str, outcome: str, started: float, first: float | None) -> None:
        self.outcomes[f"{kind}: {outcome}"] += 1
        if outcome == "ok":
            self.latencies.setdefault(kind, []).append(time.monotonic() - started)
            if first is not None:
                self.first_token.setdefault(kind, []).append(first - started)


def percentiles(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        return {"count": len(values)}
    cuts = statistics.quantiles(values, n=100)
    return {"count": len(values), "p50": cuts[49], "p90": cuts[89], "p99": cuts[98], "max": max(values)}


def request_for(kind: str, tokens: int) -> tuple[str, dict[str, object]]:
    question = random.choice(QUESTIONS)
    if kind.startswith("worker"):
        body = {
            "model_identifier": MODEL,
            "generation_mode": "chat",
            "messages": [{"role": "user", "text": question}],
            "max_new_tokens": tokens,
        }
        return f"/api/{MODEL}/worker_generate" + ("_stream" if kind.endswith("stream") else ""), body
    body = {"model": MODEL, "messages": [{"role": "user", "content": question}], "max_tokens": tokens}
    return "/v1/chat/completions", body | ({"stream": True} if kind.endswith("stream") else {})


async def one_request(client: httpx.AsyncClient, kind: str, results: Results) -> None:
    url, body = request_for(kind, random.randint(16, 128))
    started, first = time.monotonic(), None
    try:
        async with client.stream("POST", url, json=body) as response:
            received = b""
            async for data in response.aiter_raw():
                first = first or time.monotonic()
                received += data
        outcome = judge(kind, response.status_code, received)
    except httpx.HTTPError as error:
        outcome = type(error).__name__
    results.record(kind, outcome, started, first if kind.endswith("stream") else None)


def judge(kind: str, status: int, received: bytes) -> str:
    if status != 200:
        return f"HTTP {status}"
    if kind == "worker stream":
        last = received.rstrip(b"\0").rsplit(b"\0", 1)[-1]
        return "ok" if json.loads(last).get("finish_reason") in ("stop", "length") else "cut"
    if kind == "openai stream":
        return "ok" if received.rstrip().endswith(b"data: [DONE]") and b'"error"' not in received else "cut"
    return "ok" if json.loads(received).get("error_code", 0) == 0 else "error"


async def client_loop(client: httpx.AsyncClient, deadline: float, results: Results) -> None:
    kinds = ["worker", "worker stream", "openai", "openai stream"]
    while time.monotonic() < deadline:
        await one_request(client, random.choice(kinds), results)


def stack_processes(root_pid: int | None) -> list[psutil.Process]:
    if root_pid is not None:
        root = psutil.Process(root_pid)
        return [root, *root.children(recursive=True)]
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if any(name in cmdline for name in STACK_PROCESSES) and process.pid != os.getpid():
            found.append(process)
    return found


def process_name(process: psutil.Process) -> str:
    cmdline = process.cmdline()
    for flag in ("--port", "--service"):
        if flag in cmdline:
            return f"{' '.join(cmdline[:3])[:60]} {flag} {cmdline[cmdline.index(flag) + 1]} (pid {process.pid})"
    return f"{' '.join(cmdline[:3])[:80]} (pid {process.pid})"


async def sample_memory(processes: list[psutil.Process], deadline: float, samples: dict[str, list[int]]) -> None:
    while time.monotonic() < deadline:
        for process in processes:
            try:
                samples.setdefault(process_name(process), []).append(process.memory_info().rss)
            except psutil.NoSuchProcess:
                samples.setdefault(process_name(process), []).append(-1)
        await asyncio.sleep(MEMORY_EVERY_SECONDS)


def memory_report(samples: dict[str, list[int]]) -> dict[str, dict[str, object]]:
    """Per process: resident memory after the warm-up, at the end, the growth, and one sample a minute."""
    skip = int(WARM_UP_SECONDS / MEMORY_EVERY_SECONDS)
    per_minute = int(60 / MEMORY_EVERY_SECONDS)
    report: dict[str, dict[str, object]] = {}
    for name, values in samples.items():
        steady = [value / 2**20 for value in values[skip:] if value > 0] or [value / 2**20 for value in values]
        report[name] = {
            "after_warm_up_mib": round(steady[0], 1),
            "end_mib": round(steady[-1], 1),
            "growth_mib": round(steady[-1] - steady[0], 1),
            "each_minute_mib": [round(value) for value in steady[::per_minute]],
        }
    return report


async def soak(args: argparse.Namespace) -> dict[str, object]:
    tls = ssl.create_default_context(cafile=args.ca_file)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    results, samples = Results(), {}
    deadline = time.monotonic() + args.duration
    processes = stack_processes(args.pid)
    client = httpx.AsyncClient(base_url=args.base_url, verify=tls, headers=headers, timeout=300, limits=limits)
    async with client:
        memory = asyncio.create_task(sample_memory(processes, deadline, samples))
        await asyncio.gather(*(client_loop(client, deadline, results) for _ in range(args.concurrency)))
        await memory
    total = sum(results.outcomes.values())
    failed = sum(count for outcome, count in results.outcomes.items() if not outcome.endswith(": ok"))
    return {
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "requests": total,
        "failed": failed,
        "outcomes": dict(sorted(results.outcomes.items())),
        "latency_s": {kind: percentiles(values) for kind, values in sorted(results.latencies.items())},
        "time_to_first_chunk_s": {kind: percentiles(values) for kind, values in sorted(results.first_token.items())},
        "memory": memory_report(samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="https://localhost:8443")
    parser.add_argument("--ca-file", default=".llm-ops/tls/ca.pem")
    parser.add_argument("--api-key", default=os.environ.get("LLM_OPS_API_KEY"), help="default: $LLM_OPS_API_KEY")
    parser.add_argument("--duration", type=float, default=600, help="seconds of traffic")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--pid", type=int, help="pid of `llm-ops up` (default: every stack-looking process)")
    parser.add_argument("--output", type=Path, help="write the report here as JSON too")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    random.seed(args.seed)
    report = asyncio.run(soak(args))
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
