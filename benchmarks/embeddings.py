"""Embeddings through the front door against the same worker's own port: requests/s, inputs/s, p50 and p99.

Runs on a stack that serves the packaged embedding model (`llm-ops up`, its default). Each round sends
`--requests` requests of a batch size to each target in turn, `--concurrency` at a time, so both targets see
the machine in the same state; the rounds alternate the order. Requests through the front door come from
`--sources` loopback addresses in turn (127.0.0.2, ...), so that Traefik's per-client rate limit (20 requests
a second, bursts of 100) is not what is measured.

    .venv/bin/python benchmarks/embeddings.py --ca-file .llm-ops/tls/ca.pem \\
        --worker-url http://127.0.0.1:21003 --output docs/benchmarks/embeddings.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

MODEL = "all-MiniLM-L6-v2"
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank on a sunny afternoon, number {}."


async def run_level(
    clients: list[httpx.AsyncClient], url: str, batch: int, requests: int, concurrency: int
) -> dict[str, float]:
    latencies: list[float] = []
    sent = iter(range(requests))

    async def user() -> None:
        for number in sent:
            body = {"model": MODEL, "input": [SENTENCE.format(number * batch + i) for i in range(batch)]}
            started = time.perf_counter()
            response = await clients[number % len(clients)].post(url, json=body)
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "requests_per_s": len(latencies) / elapsed,
        "inputs_per_s": len(latencies) * batch / elapsed,
        "p50_ms": cuts[49] * 1000,
        "p99_ms": cuts[98] * 1000,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    tls = ssl.create_default_context(cafile=args.ca_file)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    targets = {
        "front door /v1": (f"{args.base_url}/v1/embeddings", True),
        "front door /api/<model>/v1": (f"{args.base_url}/api/{MODEL}/v1/embeddings", True),
        "worker's own port": (f"{args.worker_url}/v1/embeddings", False),
    }
    results: dict[str, dict[str, list[dict[str, float]]]] = {name: {} for name in targets}
    async with contextlib.AsyncExitStack() as stack:
        front = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    headers=headers,
                    timeout=120,
                    transport=httpx.AsyncHTTPTransport(verify=tls, local_address=f"127.0.0.{2 + source}"),
                )
            )
            for source in range(args.sources)
        ]
        direct = [await stack.enter_async_context(httpx.AsyncClient(headers=headers, timeout=120))]
        for batch in args.batches:
            for round_number in range(args.rounds):
                order = list(targets.items()) if round_number % 2 == 0 else list(reversed(targets.items()))
                for name, (url, through_front) in order:
                    clients = front if through_front else direct
                    await run_level(clients, url, batch, args.warmup, args.concurrency)
                    level = await run_level(clients, url, batch, args.requests, args.concurrency)
                    results[name].setdefault(str(batch), []).append(level)
    settings = {"concurrency": args.concurrency, "requests": args.requests, "rounds": args.rounds}
    return settings | {"sources": args.sources, "results": results}


def summary(run: dict[str, Any]) -> str:
    lines = [
        "| target | batch | requests/s | inputs/s | p50 ms | p99 ms | inputs/s vs worker |",
        "|---|---|---|---|---|---|---|",
    ]
    worker = run["results"]["worker's own port"]
    for name, batches in run["results"].items():
        for batch, levels in batches.items():
            mean = {key: statistics.mean(level[key] for level in levels) for key in levels[0]}
            reference = statistics.mean(level["inputs_per_s"] for level in worker[batch])
            lines.append(
                f"| {name} | {batch} | {mean['requests_per_s']:.1f} | {mean['inputs_per_s']:.1f} | "
                f"{mean['p50_ms']:.1f} | {mean['p99_ms']:.1f} | {mean['inputs_per_s'] / reference:.2f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="https://localhost:8443")
    parser.add_argument(
        "--worker-url", required=True, help="the embedding worker's own port, e.g. http://127.0.0.1:21003"
    )
    parser.add_argument("--ca-file", required=True)
    parser.add_argument("--api-key", default="")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sources", type=int, default=16, help="loopback addresses the front door's requests use")
    parser.add_argument("--output", type=Path)
    arguments = parser.parse_args()
    run = asyncio.run(main(arguments))
    print(summary(run))
    if arguments.output:
        arguments.output.write_text(json.dumps(run, indent=2))
