"""A stand-in for a vLLM worker that streams ready-made completions as fast as it can: no engine, no model.

    .venv/bin/python benchmarks/standin_worker.py --port 21002 [--controller http://127.0.0.1:21001]

`POST /v1/completions` with `"stream": true` answers `max_tokens` vLLM-shaped SSE events (`" tok"` each,
the last with `finish_reason` "length"), then `data: [DONE]`: one HTTP chunk and one socket write per event,
the event loop yielded between events (as vLLM's server yields per token), so that many streams interleave.
`--event-interval-ms` paces the events instead (a replica at 1000/interval tokens/s per stream).

For LLM Ops's router to route to it, it also answers what the router and the controller ask a worker:
`GET /health`, `GET /metrics` (LLM Ops's admission gauges and vLLM's KV-cache gauge), `GET /v1/models` and
`POST /api/worker_get_status`; with `--controller` it registers there as `http://127.0.0.1:PORT/api`.

A raw asyncio HTTP/1.1 server (keep-alive, Content-Length request bodies, on uvloop when installed): a
framework would cost the stand-in more CPU per event than the relays it is there to measure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time

import httpx

MODEL = "standin"
STATUS = {"model_names": [MODEL], "speed": 1, "queue_length": 0}
MODEL_CARDS = {
    "object": "list",
    "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "vllm", "root": MODEL, "max_model_len": 2048}],
}
CAPACITY = 100_000
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)


def event(finish_reason: str | None) -> bytes:
    """One vLLM completion chunk as an SSE event."""
    choice = {"index": 0, "text": " tok", "logprobs": None, "finish_reason": finish_reason}
    chunk = {
        "id": "cmpl-standin",
        "object": "text_completion",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [choice],
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


TOKEN, LAST, DONE = http_chunk(event(None)), http_chunk(event("length")), http_chunk(b"data: [DONE]\n\n")
END = b"0\r\n\r\n"


def response(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def json_response(document: object, status: str = "200 OK") -> bytes:
    return response(status, json.dumps(document).encode())


class Standin:
    def __init__(self, event_interval: float) -> None:
        self.event_interval = event_interval
        self.running = 0

    def metrics(self) -> bytes:
        lines = [
            f"# TYPE llm_ops_requests_running gauge\nllm_ops_requests_running {self.running}",
            "# TYPE llm_ops_requests_waiting gauge\nllm_ops_requests_waiting 0",
            f"# TYPE llm_ops_requests_capacity gauge\nllm_ops_requests_capacity {CAPACITY}",
            f'# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{model_name="{MODEL}"}} 0.0',
        ]
        return response("200 OK", ("\n".join(lines) + "\n").encode(), "text/plain; version=0.0.4")

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            while await self.answer_one(reader, writer):
                pass
        writer.close()

    async def answer_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Reads one request and answers it; False when the connection is to close."""
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = dict(line.lower().split(":", 1) for line in header_lines if ":" in line)
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if method == "POST" and path == "/v1/completions":
            await self.stream(body, writer)
        else:
            writer.write(self.small_answer(method, path))
        await writer.drain()
        return headers.get("connection", "").strip() != "close"

    def small_answer(self, method: str, path: str) -> bytes:
        if method == "GET" and path == "/health":
            return json_response({"status": "ok"})
        if method == "GET" and path == "/metrics":
            return self.metrics()
        if method == "GET" and path == "/v1/models":
            return json_response(MODEL_CARDS)
        if method == "POST" and path == "/api/worker_get_status":
            return json_response(STATUS)
        print(f"stand-in: no route for {method} {path}", file=sys.stderr, flush=True)
        return json_response({"error": f"no route for {method} {path}"}, "404 Not Found")

    async def stream(self, body: bytes, writer: asyncio.StreamWriter) -> None:
        request = json.loads(body)
        if not request.get("stream"):
            writer.write(json_response({"error": "the stand-in only streams"}, "400 Bad Request"))
            return
        self.running += 1
        try:
            writer.write(STREAM_HEAD)
            for _ in range(int(request.get("max_tokens", 16)) - 1):
                writer.write(TOKEN)
                await writer.drain()
                await asyncio.sleep(self.event_interval)
            writer.write(LAST + DONE + END)
        finally:
            self.running -= 1


async def register(controller: str, port: int) -> None:
    registration = {"worker_name": f"http://127.0.0.1:{port}/api", "check_heart_beat": False, "worker_status": STATUS}
    async with httpx.AsyncClient(timeout=5) as http:
        (await http.post(f"{controller}/register_worker", json=registration)).raise_for_status()


async def main(args: argparse.Namespace) -> None:
    standin = Standin(args.event_interval_ms / 1000)
    server = await asyncio.start_server(standin.serve_connection, "127.0.0.1", args.port, backlog=4096)
    if args.controller:
        await register(args.controller, args.port)
    print(f"stand-in worker on http://127.0.0.1:{args.port}", flush=True)
    async with server:
        await server.serve_forever()


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--controller", help="a controller to register with, e.g. http://127.0.0.1:21001")
    parser.add_argument("--event-interval-ms", type=float, default=0.0, help="0: as fast as it can")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(args))
    else:
        uvloop.run(main(args))


if __name__ == "__main__":
    run()
