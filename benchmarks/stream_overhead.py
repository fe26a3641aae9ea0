"""One stream through the front door (Traefik, TLS) versus the same stream straight at the worker.

Start the stack first (`make up`), then:

    .venv/bin/python benchmarks/stream_overhead.py --runs 5

Runs alternate between the two paths so that both see the same machine load; the script prints the
median time to first chunk and output tokens/s of each path and their ratio.
"""

from __future__ import annotations

import argparse
import json
import ssl
import statistics
import time
from dataclasses import dataclass

import httpx

BODY = {
    "model_identifier": "SmolLM2-135M-Instruct",
    "generation_mode": "chat",
    "messages": [{"role": "user", "text": "Tell me a long story about a dragon who learns to fly."}],
    "temperature": 0,
    "max_new_tokens": 128,
}


@dataclass(frozen=True)
class StreamTiming:
    first_chunk_s: float
    total_s: float
    tokens: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.total_s


def time_stream(client: httpx.Client, url: str) -> StreamTiming:
    start = time.perf_counter()
    first = None
    last_chunk = b""
    buffer = b""
    with client.stream("POST", url, json=BODY) as response:
        response.raise_for_status()
        for data in response.iter_raw():
            first = first or time.perf_counter() - start
            buffer += data
            *complete, buffer = buffer.split(b"\0")
            last_chunk = complete[-1] if complete else last_chunk
    total = time.perf_counter() - start
    return StreamTiming(first or total, total, json.loads(last_chunk)["usage"]["completion_tokens"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--front-door", default="https://localhost:8443/api/SmolLM2-135M-Instruct")
    parser.add_argument("--worker", default="http://127.0.0.1:21002/api")
    parser.add_argument("--ca-file", default=".llm-ops/tls/ca.pem")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    tls = ssl.create_default_context(cafile=args.ca_file)
    paths = {
        "front door": f"{args.front_door}/worker_generate_stream",
        "worker": f"{args.worker}/worker_generate_stream",
    }
    results: dict[str, list[StreamTiming]] = {name: [] for name in paths}
    with httpx.Client(verify=tls, timeout=300) as client:
        time_stream(client, paths["worker"])  # warm-up
        for _ in range(args.runs):
            for name, url in paths.items():
                results[name].append(time_stream(client, url))

    medians = {}
    for name, timings in results.items():
        first = statistics.median(t.first_chunk_s for t in timings) * 1000
        rate = statistics.median(t.tokens_per_s for t in timings)
        medians[name] = (first, rate)
        tokens = timings[0].tokens
        print(f"{name:>10}: first chunk {first:7.1f} ms   {rate:6.2f} tokens/s   ({tokens} tokens, {args.runs} runs)")
    print(f"front door / worker tokens/s: {medians['front door'][1] / medians['worker'][1]:.3f}")
    print(f"front door - worker first chunk: {medians['front door'][0] - medians['worker'][0]:+.1f} ms")


if __name__ == "__main__":
    main()
