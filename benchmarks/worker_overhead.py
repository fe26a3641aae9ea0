"""CPU LLM Ops spends per streamed chunk between vLLM's handler and the socket: the hot path of
`worker_generate_stream` (middlewares, admission, SSE events read back into FastChat chunks, JSON
framing, uvicorn), measured apart from the engine, over the tests' fake of vLLM's handlers.

    PYTHONPATH=. .venv/bin/python benchmarks/worker_overhead.py --answers 40 --tokens 500 --concurrency 8

The worker app (vLLM's app as the tests fake it, with the LLM Ops plugin attached) runs in a child
process; its handler answers every request with `--tokens` one-token SSE events at once. The
script reads the streams from another process and reports the server's CPU time per chunk, for each
HTTP implementation of uvicorn and each stream mode. CPU time, not wall time: it does not depend on
the client's speed or the machine's other load.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import uvicorn

from tests.conftest import free_port
from tests.unit.fake_vllm import NAMES, FakeVllm, fake_worker_to_serve


def serve(port: int, http: str, tokens: int) -> None:
    app = fake_worker_to_serve(FakeVllm(words=[" word"] * tokens, max_model_len=2 * tokens + 64))
    uvicorn.run(app, host="127.0.0.1", port=port, http=http, log_level="warning", access_log=False)


def stream_once(client: httpx.Client, url: str, body: dict[str, object]) -> int:
    with client.stream("POST", url, json=body) as response:
        return sum(chunk.count(b"\0") for chunk in response.iter_raw())


def cpu_per_chunk(port: int, server: psutil.Process, args: argparse.Namespace, stream_text: str) -> float:
    body: dict[str, object] = {
        "model_identifier": NAMES[0],
        "generation_mode": "completion",
        "prompt": "Once upon a time",
        "max_new_tokens": args.tokens,
    }
    if stream_text == "delta":
        body["stream_text"] = "delta"
    url = f"http://127.0.0.1:{port}/api/worker_generate_stream"
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=args.concurrency)) as client:
        stream_once(client, url, body)  # warm-up
        before = server.cpu_times()
        with ThreadPoolExecutor(args.concurrency) as pool:
            chunks = sum(pool.map(lambda _: stream_once(client, url, body), range(args.answers)))
        after = server.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    return used / chunks * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--http", nargs="+", default=["h11", "httptools"])
    args = parser.parse_args()
    for http in args.http:
        port = free_port()
        process = multiprocessing.Process(target=serve, args=(port, http, args.tokens), daemon=True)
        process.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        server = psutil.Process(process.pid)
        for stream_text in ("cumulative", "delta"):
            micros = cpu_per_chunk(port, server, args, stream_text)
            print(f"{http:>9} {stream_text:>10}: {micros:6.1f} µs of worker CPU per chunk")
        process.terminate()
        process.join()


if __name__ == "__main__":
    main()
