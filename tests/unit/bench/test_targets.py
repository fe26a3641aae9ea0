"""`llm-ops bench`'s stream clients (llm_ops/bench/targets.py): FastChat's and the OpenAI API's, over verified TLS."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from llm_ops.bench.stats import RequestRecord, inter_token_latencies
from llm_ops.bench.targets import http_client, openai_target, worker_target
from tests.unit.fake_vllm import FakeVllm, fake_worker_to_serve
from tests.unit.served import served

pytestmark = pytest.mark.anyio


def fake_worker() -> FastAPI:
    return fake_worker_to_serve(FakeVllm(delay=0.05))


async def test_worker_client_times_every_token_of_the_real_worker_app() -> None:
    with served(fake_worker()) as url:
        async with http_client(4, 10) as client:
            target = worker_target("b", "worker", f"{url}/api", client, "fake-model", "Once upon", "cumulative")
            timed = await target.send(max_new_tokens=16)
    assert timed.error is None and timed.output_tokens == 5
    assert [arrival.tokens for arrival in timed.arrivals] == [1, 1, 1, 1, 1]
    assert 0.04 <= timed.arrivals[0].time - timed.start < 1
    assert all(0.03 <= gap < 1 for gap in inter_token_latencies(timed))
    assert timed.end >= timed.arrivals[-1].time


async def test_worker_client_records_a_refused_request_as_an_error() -> None:
    with served(fake_worker()) as url:
        async with http_client(4, 10) as client:
            target = worker_target("b", "worker", f"{url}/api", client, "no-such-model", "Once", "cumulative")
            timed = await target.send(max_new_tokens=4)
    assert not timed.ok and timed.error is not None and "HTTP 404" in timed.error


@dataclass
class Script:
    """A server streaming `chunks` (bytes), `delay` seconds apart; it keeps the bodies it got and the client
    port each came from (one port: one connection)."""

    chunks: list[bytes]
    delay: float = 0.05
    bodies: list[dict[str, Any]] = field(default_factory=list)
    client_ports: list[int] = field(default_factory=list)

    def app(self, path: str, media_type: str) -> FastAPI:
        app = FastAPI()

        async def stream() -> AsyncIterator[bytes]:
            for chunk in self.chunks:
                await asyncio.sleep(self.delay)  # the scripted server's pace: deliberate
                yield chunk

        @app.post(path)
        async def generate(request: Request) -> StreamingResponse:
            self.bodies.append(await request.json())
            self.client_ports.append(request.client.port if request.client else 0)
            return StreamingResponse(stream(), media_type=media_type)

        return app


def worker_chunk(text: str, tokens: int, finish: str | None = None, error_code: int = 0) -> bytes:
    usage = {"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": 3 + tokens}
    chunk = {"text": text, "error_code": error_code, "usage": usage, "finish_reason": finish}
    return json.dumps(chunk).encode() + b"\0"


async def send_worker(script: Script, stream_text: str = "delta") -> RequestRecord:
    with served(script.app("/api/worker_generate_stream", "application/octet-stream")) as url:
        async with http_client(2, 10) as client:
            target = worker_target("a", "stack", f"{url}/api", client, "M", "Once", stream_text)
            return await target.send(max_new_tokens=8)


async def test_worker_client_in_delta_mode_asks_for_deltas_and_counts_tokens_from_usage() -> None:
    script = Script([worker_chunk("Once", 1), worker_chunk(" upon a", 3), worker_chunk(" time", 4, "length")])
    timed = await send_worker(script)
    assert timed.error is None and timed.output_tokens == 4
    assert [arrival.tokens for arrival in timed.arrivals] == [1, 2, 1]
    assert script.bodies == [
        {
            "model_identifier": "M",
            "generation_mode": "completion",
            "prompt": "Once",
            "temperature": 0,
            "max_new_tokens": 8,
            "stream_text": "delta",
        }
    ]


async def test_worker_client_leaves_out_stream_text_in_cumulative_mode() -> None:
    script = Script([worker_chunk("Once", 1, "stop")])
    assert (await send_worker(script, "cumulative")).ok
    assert "stream_text" not in script.bodies[0]


async def test_worker_client_fails_on_an_error_chunk_or_a_stream_without_finish_reason() -> None:
    failed = await send_worker(Script([worker_chunk("Once", 1), worker_chunk("boom", 1, "error", error_code=50001)]))
    assert failed.error is not None and "error_code 50001" in failed.error
    cut = await send_worker(Script([worker_chunk("Once", 1), worker_chunk(" upon", 2)]))
    assert cut.error is not None and "finish_reason" in cut.error


def sse(text: str | None, tokens: int, finish: str | None = None) -> bytes:
    choices = [] if text is None else [{"index": 0, "text": text, "finish_reason": finish}]
    usage = {"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": 3 + tokens}
    return f"data: {json.dumps({'id': 'cmpl-1', 'choices': choices, 'usage': usage})}\n\n".encode()


async def send_openai(script: Script, requests: int = 1) -> RequestRecord:
    """The last of `requests` sent one after another on one client."""
    with served(script.app("/v1/completions", "text/event-stream")) as url:
        async with http_client(2, 10) as client:
            for _ in range(requests):
                timed = await openai_target("c", "vllm", url, client, "M", "Once").send(max_new_tokens=8)
            return timed


async def test_openai_client_reads_server_sent_events_until_done() -> None:
    events = [sse("Once", 1), sse(" upon a", 3), sse(" time", 4, "length"), sse(None, 4), b"data: [DONE]\n\n"]
    script = Script(events, delay=0.05)
    timed = await send_openai(script)
    assert timed.error is None and timed.output_tokens == 4
    assert [arrival.tokens for arrival in timed.arrivals] == [1, 2, 1]
    gaps = inter_token_latencies(timed)  # chunks 50 ms apart; the second brought two tokens
    assert gaps[0] == gaps[1] and 0.02 <= gaps[0] < 0.5 and 0.04 <= gaps[2] < 1
    assert script.bodies[0] == {
        "model": "M",
        "prompt": "Once",
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "ignore_eos": False,
    }


async def test_openai_client_reads_each_stream_to_its_end_so_the_next_request_reuses_the_connection() -> None:
    # Leaving at [DONE] would close the connection: every request through TLS would pay a handshake.
    script = Script([sse("Once", 1, "length"), b"data: [DONE]\n\n"], delay=0.01)
    assert (await send_openai(script, requests=3)).ok
    assert len(script.client_ports) == 3 and len(set(script.client_ports)) == 1


async def test_openai_client_fails_on_an_event_after_done() -> None:
    late = await send_openai(Script([sse("Once", 1, "length"), b"data: [DONE]\n\n", sse(" upon", 2)], delay=0.01))
    assert late.error is not None and "after data: [DONE]" in late.error


async def test_openai_client_fails_without_done_or_on_an_error_event() -> None:
    cut = await send_openai(Script([sse("Once", 1), sse(" upon", 2, "length")]))
    assert cut.error is not None and "[DONE]" in cut.error
    error = b'data: {"error": {"message": "boom", "code": 500}}\n\n'
    failed = await send_openai(Script([sse("Once", 1), error, b"data: [DONE]\n\n"]))
    assert failed.error is not None and "boom" in failed.error


async def test_clients_verify_tls_against_the_given_ca_file(tmp_path: Path) -> None:
    ours, other = trustme.CA(), trustme.CA()
    ours.cert_pem.write_to_path(str(tmp_path / "ours.pem"))
    other.cert_pem.write_to_path(str(tmp_path / "other.pem"))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ours.issue_cert("localhost").configure_cert(tls)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=tls)
    url = f"https://localhost:{server.sockets[0].getsockname()[1]}/"
    async with server, http_client(1, 5, tmp_path / "ours.pem") as trusting:
        assert (await trusting.get(url)).text == "ok"
        async with http_client(1, 5, tmp_path / "other.pem") as distrusting:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await distrusting.get(url)
