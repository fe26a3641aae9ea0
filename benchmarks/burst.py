"""A burst of streamed requests at once through the front door: who runs, who gets 429, how fast, and whether
anything waits.

    .venv/bin/llm-ops up --replicas 2                                   # shell 1 (--limit-worker-concurrency N
    PYTHONPATH=. .venv/bin/python benchmarks/burst.py --requests 180    # shell 2  to leave room for fewer)

Opens `--requests` connections to the front door (TLS included), then sends as many streamed requests on
them at the same moment, through `--route` (`v1`: `/v1/completions`; `fastchat`:
`/api/<model>/worker_generate_stream`), from `--sources` loopback addresses so that Traefik's per-client
rate limit (bursts of 100) is not what refuses them. While they run it reads the router's
`/replicas` every 50 ms: the most requests each replica ran at once (its admission's own count) and the most
the router had in flight on it. Reports the answers by status, the time to the response's headers (a 429's
is the time to refuse; a 200's says whether the request waited before it ran), the time to the first token,
and the replicas' queues once the burst is over (they must be back to 0). Writes `--output` (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

STATE_DIR = Path(".llm-ops")


@dataclass
class Answer:
    status: int
    headers_after: float  # seconds from the burst's start to the response's headers
    first_token_after: float | None = None
    error: str | None = None


@dataclass
class Peaks:
    running: dict[str, int] = field(default_factory=dict)  # replica -> most requests its admission ran at once
    in_flight: dict[str, int] = field(default_factory=dict)  # replica -> most the router had in flight on it


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="https://localhost:8443")
    parser.add_argument("--router-url", default="http://127.0.0.1:8000", help="the router's own port (/replicas)")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--route", choices=["v1", "fastchat"], default="v1")
    parser.add_argument("--requests", type=int, default=180)
    parser.add_argument("--max-tokens", type=int, default=150)
    parser.add_argument("--sources", type=int, default=4, help="loopback addresses to send from (127.0.0.2, ...)")
    parser.add_argument("--ca-file", type=Path, default=STATE_DIR / "tls" / "ca.pem")
    parser.add_argument(
        "--access-log", type=Path, default=STATE_DIR / "traefik" / "access.log", help="Traefik's (JSON) access log"
    )
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/burst.json"))
    return parser.parse_args()


def request_of(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    if args.route == "v1":
        body = {"model": args.model, "prompt": "Once upon a time", "max_tokens": args.max_tokens, "stream": True}
        return "/v1/completions", body | {"ignore_eos": True}
    body = {
        "model_identifier": args.model,
        "generation_mode": "completion",
        "prompt": "Once upon a time",
        "max_new_tokens": args.max_tokens,
    }
    return f"/api/{args.model}/worker_generate_stream", body


def key_headers() -> dict[str, str]:
    keys = os.environ.get("LLM_OPS_API_KEYS", "").replace(",", " ").split()
    return {"Authorization": f"Bearer {min(keys)}"} if keys else {}


async def send(client: httpx.AsyncClient, path: str, body: dict[str, Any], start: float) -> Answer:
    try:
        async with client.stream("POST", path, json=body) as response:
            answer = Answer(response.status_code, time.monotonic() - start)
            async for _ in response.aiter_raw():
                if answer.first_token_after is None:
                    answer.first_token_after = time.monotonic() - start
        return answer
    except httpx.HTTPError as error:
        return Answer(0, time.monotonic() - start, error=repr(error))


async def watch(router: httpx.AsyncClient, peaks: Peaks, done: asyncio.Event) -> None:
    while not done.is_set():
        for replica in (await router.get("/replicas")).json()["replicas"]:
            url = replica["url"]
            peaks.running[url] = max(peaks.running.get(url, 0), replica["running"])
            peaks.in_flight[url] = max(peaks.in_flight.get(url, 0), replica["in_flight"])
        await asyncio.sleep(0.05)


async def queues(router: httpx.AsyncClient) -> dict[str, int]:
    """Each replica's requests running and waiting, as the router last read them, once they settle."""
    await asyncio.sleep(1.5)  # three reads of the router
    replicas = (await router.get("/replicas")).json()["replicas"]
    return {replica["url"]: replica["running"] + replica["waiting"] + replica["in_flight"] for replica in replicas}


async def burst(args: argparse.Namespace) -> dict[str, Any]:
    tls = ssl.create_default_context(cafile=str(args.ca_file))
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(600, connect=30)
    sources = [f"127.0.0.{2 + source}" for source in range(args.sources)]
    clients = [
        httpx.AsyncClient(
            base_url=args.base_url,
            transport=httpx.AsyncHTTPTransport(verify=tls, local_address=address, limits=limits),
            headers=key_headers(),
            timeout=timeout,
        )
        for address in sources
    ]
    path, body = request_of(args)
    # One connection per request, opened (TLS included) before the clock starts: what is timed is the answer.
    await asyncio.gather(*(clients[index % len(clients)].get("/v1/models") for index in range(args.requests)))
    logged_before = args.access_log.stat().st_size if args.access_log.is_file() else 0
    peaks, done = Peaks(), asyncio.Event()
    async with httpx.AsyncClient(base_url=args.router_url, headers=key_headers(), timeout=10) as router:
        watcher = asyncio.create_task(watch(router, peaks, done))
        start = time.monotonic()
        answers = await asyncio.gather(
            *(send(clients[index % len(clients)], path, body, start) for index in range(args.requests))
        )
        done.set()
        await watcher
        after = await queues(router)
    for client in clients:
        await client.aclose()
    durations = await origin_durations(args, path, logged_before, len(answers))
    return report(args, answers, peaks, after) | {"router_answered_in_ms": durations}


async def origin_durations(
    args: argparse.Namespace, path: str, offset: int, answers: int
) -> dict[str, dict[str, float | None]]:
    """By status, how long the router took to answer (its headers), as Traefik's access log measured it:
    the client's own time also counts the machine's two cores, shared with the engines, serving it.
    Traefik writes its access log asynchronously: this waits (up to 30 s) for a line per answer."""
    if not args.access_log.is_file():
        return {}
    durations: dict[str, list[float]] = {}
    for _ in range(60):
        with args.access_log.open("rb") as log:
            log.seek(offset)
            entries = [json.loads(line) for line in log.read().splitlines() if line.strip()]
        durations = {}
        for entry in entries:
            if entry.get("RequestPath") == path and "OriginStatus" in entry:
                durations.setdefault(str(entry["OriginStatus"]), []).append(entry["OriginDuration"] / 1e9)
        if sum(map(len, durations.values())) >= answers:
            break
        await asyncio.sleep(0.5)
    return {status: milliseconds(values) for status, values in durations.items()}


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def milliseconds(values: list[float]) -> dict[str, float | None]:
    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 1)

    return {
        "p50": ms(statistics.median(values) if values else None),
        "p99": ms(percentile(values, 0.99)),
        "max": ms(max(values, default=None)),
    }


def report(args: argparse.Namespace, answers: list[Answer], peaks: Peaks, after: dict[str, int]) -> dict[str, Any]:
    by_status: dict[str, int] = {}
    for answer in answers:
        by_status[str(answer.status)] = by_status.get(str(answer.status), 0) + 1
    served = [answer for answer in answers if answer.status == 200]
    refused = [answer for answer in answers if answer.status == 429]
    return {
        "settings": {key: str(value) for key, value in vars(args).items()},
        "answers_by_status": by_status,
        "refused_429_after_ms": milliseconds([answer.headers_after for answer in refused]),
        "served_headers_after_ms": milliseconds([answer.headers_after for answer in served]),
        "served_first_token_after_ms": milliseconds(
            [answer.first_token_after for answer in served if answer.first_token_after is not None]
        ),
        "peak_running_per_replica": peaks.running,
        "peak_router_in_flight_per_replica": peaks.in_flight,
        "queues_after": after,
        "errors": sorted({answer.error for answer in answers if answer.error})[:5],
        "answers": [asdict(answer) for answer in answers],
    }


def main() -> None:
    args = arguments()
    result = asyncio.run(burst(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1))
    print(json.dumps({key: value for key, value in result.items() if key != "answers"}, indent=1))


if __name__ == "__main__":
    main()
