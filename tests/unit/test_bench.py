"""`llm-ops bench`: its statistics, its two stream clients, vLLM's flags and launcher, the run loop, the exit status."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import trustme
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from llm_ops.bench import cpu
from llm_ops.bench.report import BenchReport
from llm_ops.bench.run import run_against
from llm_ops.bench.settings import BenchSettings
from llm_ops.bench.stats import SLO, Arrival, RequestRecord, inter_token_latencies, percentile, summarize, tpot
from llm_ops.bench.targets import http_client, openai_target, worker_target
from llm_ops.bench.vllm_server import (
    ServerError,
    reference_environment,
    running_server,
    server_command,
    service_argv,
)
from llm_ops.cli import main
from tests.conftest import free_port
from tests.unit.fake_vllm import FakeVllm, fake_worker_to_serve
from tests.unit.served import served

pytestmark = pytest.mark.anyio
COMPOSE_FILE = Path(__file__).parents[2] / "docker-compose.yml"
SLOW = SLO(ttft_ms=500, tpot_ms=100)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def record(start: float, arrivals: list[tuple[float, int]], end: float, error: str | None = None) -> RequestRecord:
    chunks = tuple(Arrival(time, tokens) for time, tokens in arrivals)
    return RequestRecord(start, end, chunks, sum(tokens for _, tokens in arrivals), error)


# Statistics


def test_percentiles_interpolate_between_ranks_and_are_none_without_values() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([float(value) for value in range(101)], 90) == 90
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert percentile([], 50) is None


def test_inter_token_latency_shares_a_chunks_gap_among_its_tokens() -> None:
    timed = record(0.0, [(0.1, 1), (0.3, 2), (0.4, 1), (0.8, 4)], 0.8)
    assert inter_token_latencies(timed) == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])


def test_time_per_output_token_excludes_the_first_token() -> None:
    assert tpot(record(0.0, [(0.2, 1), (0.7, 5), (1.2, 5)], 1.2)) == pytest.approx(0.1)
    assert tpot(record(0.0, [(0.2, 1)], 0.2)) is None


def test_goodput_counts_only_completed_requests_within_every_slo() -> None:
    records = [
        record(0.0, [(0.1, 1), (0.2, 9)], 0.2),  # good
        record(0.0, [(0.9, 1), (1.0, 9)], 1.0),  # TTFT 900 ms > 500
        record(0.0, [(0.1, 1), (2.0, 9)], 2.0),  # TPOT 211 ms > 100
        record(0.0, [(0.1, 1)], 50.0, error="HTTP 500"),
    ]
    summary = summarize(records, wall_s=2.0, slo=SLOW)
    assert (summary.good_requests, summary.goodput_per_s) == (1, 0.5)
    assert summary.requests_per_s == 1.5
    assert summarize(records, wall_s=2.0, slo=SLO(500, 100, e2e_ms=100)).good_requests == 0


def test_failed_requests_are_counted_but_left_out_of_latencies_and_tokens() -> None:
    records = [
        record(0.0, [(0.1, 1), (0.2, 3)], 0.2),
        record(0.0, [(0.3, 1), (0.5, 3)], 0.5),
        record(0.0, [(9.0, 7)], 60.0, error="ReadTimeout: "),
        record(0.0, [], 0.1),  # no token at all is a failure too
    ]
    summary = summarize(records, wall_s=1.0, slo=SLOW)
    assert (summary.requests, summary.completed, summary.failed) == (4, 2, 2)
    assert summary.errors == ["ReadTimeout: ", "no output"]
    assert summary.output_tokens == 8 and summary.output_tokens_per_s == 8.0
    assert summary.ttft_ms.p99 == pytest.approx(298) and summary.e2e_ms.p50 == pytest.approx(350)


# The stream clients


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
    """A server streaming `chunks` (bytes), `delay` seconds apart; it keeps the bodies it got."""

    chunks: list[bytes]
    delay: float = 0.05
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def app(self, path: str, media_type: str) -> FastAPI:
        app = FastAPI()

        async def stream() -> AsyncIterator[bytes]:
            for chunk in self.chunks:
                await asyncio.sleep(self.delay)
                yield chunk

        @app.post(path)
        async def generate(request: Request) -> StreamingResponse:
            self.bodies.append(await request.json())
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


async def send_openai(script: Script) -> RequestRecord:
    with served(script.app("/v1/completions", "text/event-stream")) as url:
        async with http_client(2, 10) as client:
            return await openai_target("c", "vllm", url, client, "M", "Once").send(max_new_tokens=8)


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


async def test_openai_client_fails_without_done_or_on_an_error_event() -> None:
    cut = await send_openai(Script([sse("Once", 1), sse(" upon", 2, "length")]))
    assert cut.error is not None and "[DONE]" in cut.error
    error = b'data: {"error": {"message": "boom", "code": 500}}\n\n'
    failed = await send_openai(Script([sse("Once", 1), error, b"data: [DONE]\n\n"]))
    assert failed.error is not None and "boom" in failed.error


# vLLM's server


def test_the_reference_server_is_vllms_own_with_the_default_services_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("llm_ops.models.default.ensure_default_model", lambda: Path("/cache/SmolLM2-135M-Instruct"))
    argv = service_argv(COMPOSE_FILE, "smollm2-135m-instruct")
    command = server_command(argv, 8123)
    assert command[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    flags = command[3:]
    assert flags[flags.index("--model") + 1] == "/cache/SmolLM2-135M-Instruct"
    assert flags[flags.index("--dtype") + 1] == "float32"
    assert flags[flags.index("--served-model-name") + 1] == "SmolLM2-135M-Instruct"
    assert flags[-4:] == ["--host", "127.0.0.1", "--port", "8123"]  # the last --port wins over the service's


def test_the_reference_server_gets_no_llm_ops_flag_or_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("llm_ops.models.default.ensure_default_model", lambda: Path("/m"))
    argv = service_argv(COMPOSE_FILE, "smollm2-135m-instruct", "--limit-worker-concurrency 3 --max-queue-wait=2")
    command = " ".join(server_command(argv, 8123))
    assert "--limit-worker-concurrency" not in command and "--max-queue-wait" not in command
    assert "VLLM_PLUGINS" not in reference_environment(argv)


def test_worker_flags_given_to_up_reach_vllm_after_the_service_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("llm_ops.models.default.ensure_default_model", lambda: Path("/m"))
    argv = service_argv(COMPOSE_FILE, "smollm2-135m-instruct", "--enforce-eager --max-model-len=512")
    flags = server_command(argv, 8123)
    assert "--max-model-len=512" in flags and "--enforce-eager" in flags


FAKE_SERVER = textwrap.dedent(
    """
    import http.server, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(sys.argv[2], "w").write(str(child.pid))
    time.sleep(0.3)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
    """
)


@pytest.mark.slow
async def test_launcher_waits_for_health_then_stops_the_whole_process_group(tmp_path: Path) -> None:
    port, pid_file = free_port(), tmp_path / "child.pid"
    command = [sys.executable, "-c", FAKE_SERVER, str(port), str(pid_file)]
    async with running_server(command, {}, f"http://127.0.0.1:{port}", tmp_path / "log", timeout=30) as seconds:
        assert 0.2 < seconds < 30
        child = psutil.Process(int(pid_file.read_text()))
        assert child.is_running()
    child.wait(timeout=5)  # raises TimeoutExpired while it runs
    assert not psutil.pid_exists(child.pid)


async def test_launcher_reports_a_server_that_exits_with_its_log(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import sys; print('no such model'); sys.exit(3)"]
    with pytest.raises(ServerError, match="(?s)exited with 3.*no such model"):
        async with running_server(command, {}, f"http://127.0.0.1:{free_port()}", tmp_path / "log", timeout=30):
            pass


# The run


@dataclass
class FakeTarget:
    """Answers after `ttft`, then one token every `gap` seconds; records how many requests were in flight."""

    key: str
    name: str
    ttft: float
    gap: float = 0.002
    url: str = "fake://"
    in_flight: int = 0
    most_in_flight: list[int] = field(default_factory=list)
    measured_calls: list[int] = field(default_factory=list)

    async def send(self, max_new_tokens: int) -> RequestRecord:
        loop = asyncio.get_running_loop()
        start = loop.time()
        self.in_flight += 1
        if max_new_tokens > 1:
            self.measured_calls.append(self.in_flight)
        await asyncio.sleep(self.ttft)
        arrivals = [Arrival(loop.time(), 1)]
        for _ in range(max_new_tokens - 1):
            await asyncio.sleep(self.gap)
            arrivals.append(Arrival(loop.time(), 1))
        self.in_flight -= 1
        return RequestRecord(start, loop.time(), tuple(arrivals), max_new_tokens)


async def test_run_writes_every_level_and_target_to_json_and_draws_a_png(tmp_path: Path) -> None:
    output = tmp_path / "results" / "bench.json"
    settings = BenchSettings(
        concurrency=[1, 3], requests_per_level=6, max_new_tokens=4, output=output, progress=False, rounds=2
    )
    targets = [FakeTarget("a", "stack", 0.02), FakeTarget("b", "worker", 0.01), FakeTarget("c", "vllm", 0.01)]
    await run_against(targets, settings, "M")
    saved = BenchReport.model_validate_json(output.read_text())
    assert [level.concurrency for level in saved.levels] == [1, 3]
    for level in saved.levels:
        assert set(level.summaries) == {"a", "b", "c"}
        assert all(summary.completed == 12 and summary.failed == 0 for summary in level.summaries.values())
        assert all(len(per_round) == 2 for per_round in level.round_tokens_per_s.values())
    assert {(check.target, check.concurrency) for check in saved.checks} == {
        (key, level) for key in "abc" for level in (1, 3)
    }
    slower = next(check for check in saved.checks if check.target == "a" and check.concurrency == 1)
    assert slower.verdict == "MISS" and slower.ttft_p50_extra_ms == pytest.approx(10, abs=8)
    assert max(targets[0].measured_calls) == 3  # exactly `concurrency` in flight
    assert output.with_suffix(".png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


async def test_api_key_is_not_written_to_the_result(tmp_path: Path) -> None:
    settings = BenchSettings(concurrency=[1], requests_per_level=1, output=tmp_path / "r.json", api_key="secret")
    await run_against([FakeTarget("b", "worker", 0.0)], settings.model_copy(update={"progress": False}), "M")
    assert "secret" not in (tmp_path / "r.json").read_text()


def test_bench_exits_nonzero_naming_a_target_that_does_not_answer(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--targets", "b", "--worker-url", url, "--model", "M", "--no-progress"])
    assert exit_.value.code == 1
    message = capsys.readouterr().err
    assert f"target b (worker) at {url}/api/worker_generate_stream does not answer: ConnectError" in message


def test_bench_exits_nonzero_without_the_stack_ca_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--targets", "a", "--model", "M", "--ca-file", str(tmp_path / "ca.pem")])
    assert exit_.value.code == 1
    assert "--ca-file" in capsys.readouterr().err


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


def test_cpu_used_between_two_snapshots_is_added_up_by_kind_of_process() -> None:
    before = cpu.snapshot()
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    assert cpu.used(before, cpu.snapshot())["bench client"] >= 0.2
    assert cpu.summed([{"a": 1.0, "b": 0.5}, {"b": 1.0}]) == {"b": 1.5, "a": 1.0}


def test_a_running_process_is_named_after_the_service_it_belongs_to() -> None:
    # Named like the stack's worker by its arguments: `kind` reads command lines.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "llm-ops", "worker"])
    try:
        deadline = time.monotonic() + 10
        while "llm-ops worker" not in " ".join(psutil.Process(child.pid).cmdline()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert cpu.kind(psutil.Process(child.pid)) == "worker http"
        assert cpu.kind(psutil.Process()) == "bench client"
    finally:
        child.kill()
        child.wait()
