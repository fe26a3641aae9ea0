"""The run loop of `llm-ops bench` (llm_ops/bench/run.py): levels, targets, the JSON and the plot, the exit status."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from llm_ops.bench.report import BenchReport
from llm_ops.bench.run import run_against
from llm_ops.bench.settings import BenchSettings
from llm_ops.bench.stats import Arrival, RequestRecord
from llm_ops.cli import main
from tests.conftest import free_port

pytestmark = pytest.mark.anyio


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
        await asyncio.sleep(self.ttft)  # a scripted target's timing: deliberate, what the benchmark measures
        arrivals = [Arrival(loop.time(), 1)]
        for _ in range(max_new_tokens - 1):
            await asyncio.sleep(self.gap)  # deliberate, as above
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
