"""The result of a run: its JSON models, the issue's targets checked against vLLM, and the printed table.

The targets (issue 6): through the whole stack, output tokens/s at least 98% of vLLM's own server at
every level, time to first token (p50) at most 2 ms more, and no failed request.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from llm_ops.bench.settings import TargetKey
from llm_ops.bench.stats import Percentiles, Summary
from llm_ops.bench.vllm_client import VLLMBenchResult
from llm_ops.worker.vllm_api import installed_version

MIN_TOKENS_RATIO = 0.98
MAX_TTFT_EXTRA_MS = 2.0
REFERENCE: TargetKey = "c"


class TargetInfo(BaseModel):
    key: str
    name: str
    url: str


class LevelResult(BaseModel):
    concurrency: int
    requests_per_round: int
    summaries: dict[str, Summary]  # by target key, over all rounds
    round_tokens_per_s: dict[str, list[float]]  # by target key, one value per round
    cpu_s: dict[str, dict[str, float]] = {}  # by target key: CPU seconds by kind of process, over all rounds


class Check(BaseModel):
    """One target at one level, against the reference (vLLM's server) when it ran."""

    target: str
    concurrency: int
    tokens_per_s_ratio: float | None
    ttft_p50_extra_ms: float | None
    failed: int
    verdict: Literal["PASS", "MISS"]
    misses: list[str]


class MachineInfo(BaseModel):
    cpu_count: int | None
    platform: str
    python: str
    vllm: str | None
    llm_ops: str | None


class VLLMLaunch(BaseModel):
    """How target c was started (absent when --vllm-url named a running server)."""

    command: list[str]
    environment: dict[str, str]  # the variables set for it, beyond the inherited ones
    start_s: float


class BenchReport(BaseModel):
    created: str
    machine: MachineInfo
    model: str
    settings: dict[str, Any]
    targets: list[TargetInfo]
    vllm: VLLMLaunch | None
    levels: list[LevelResult]
    checks: list[Check]
    vllm_bench: list[VLLMBenchResult] = []  # vLLM's own client against the OpenAI targets, when asked


def machine_info() -> MachineInfo:
    return MachineInfo(
        cpu_count=os.cpu_count(),
        platform=platform.platform(),
        python=platform.python_version(),
        vllm=installed_version(),
        llm_ops=_version("llm-ops"),
    )


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def check(level: LevelResult, key: str) -> Check:
    summary = level.summaries[key]
    reference = level.summaries.get(REFERENCE) if key != REFERENCE else None
    ratio = extra = None
    misses = [f"{summary.failed} failed"] if summary.failed else []
    if reference is not None and reference.output_tokens_per_s > 0:
        ratio = summary.output_tokens_per_s / reference.output_tokens_per_s
        if ratio < MIN_TOKENS_RATIO:
            misses.append(f"tok/s {ratio:.3f} of vLLM's < {MIN_TOKENS_RATIO}")
    extra = _difference(summary.ttft_ms, reference.ttft_ms if reference else None)
    if extra is not None and extra > MAX_TTFT_EXTRA_MS:
        misses.append(f"TTFT p50 +{extra:.1f} ms > +{MAX_TTFT_EXTRA_MS:.0f} ms")
    verdict: Literal["PASS", "MISS"] = "MISS" if misses else "PASS"
    return Check(
        target=key,
        concurrency=level.concurrency,
        tokens_per_s_ratio=ratio,
        ttft_p50_extra_ms=extra,
        failed=summary.failed,
        verdict=verdict,
        misses=misses,
    )


def _difference(value: Percentiles, reference: Percentiles | None) -> float | None:
    if reference is None or value.p50 is None or reference.p50 is None:
        return None
    return value.p50 - reference.p50


def checks(levels: list[LevelResult]) -> list[Check]:
    return [check(level, key) for level in levels for key in level.summaries]


COLUMNS = "  c target    tok/s  TTFT p50   p90   p99  ITL p50 TPOT p50  e2e p50    p90    p99  goodput/s failed"


def table(levels: list[LevelResult], names: dict[str, str]) -> str:
    """Milliseconds, except tok/s and goodput (requests meeting every SLO, per second)."""
    rows = [COLUMNS]
    for level in levels:
        for key, summary in level.summaries.items():
            rows.append(_row(level.concurrency, f"{key} {names.get(key, '')}", summary))
    return "\n".join(rows)


def _row(concurrency: int, target: str, summary: Summary) -> str:
    ttft, e2e = summary.ttft_ms, summary.e2e_ms
    return (
        f"{concurrency:>3} {target:<8} {summary.output_tokens_per_s:>7.1f} {_ms(ttft.p50, 9)} {_ms(ttft.p90, 5)} "
        f"{_ms(ttft.p99, 5)} {_ms(summary.itl_ms.p50, 8)} {_ms(summary.tpot_ms.p50, 8)} {_ms(e2e.p50, 8)} "
        f"{_ms(e2e.p90, 6)} {_ms(e2e.p99, 6)} {summary.goodput_per_s:>10.2f} {summary.failed:>6}"
    )


def cpu_table(levels: list[LevelResult], names: dict[str, str]) -> str:
    """CPU seconds per 1,000 output tokens, by kind of process, for each target and level."""
    kinds = sorted({kind for level in levels for used in level.cpu_s.values() for kind in used})
    rows = ["CPU seconds per 1,000 output tokens", f"  c target   {''.join(f'{kind:>19}' for kind in kinds)}"]
    for level in levels:
        for key, used in level.cpu_s.items():
            thousands = level.summaries[key].output_tokens / 1000 or 1.0
            cells = "".join(f"{used.get(kind, 0.0) / thousands:>19.2f}" for kind in kinds)
            rows.append(f"{level.concurrency:>3} {key} {names.get(key, ''):<7}{cells}")
    return "\n".join(rows)


def _ms(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.1f}"


def verdicts(found: list[Check]) -> str:
    lines = []
    for item in found:
        ratio = "" if item.tokens_per_s_ratio is None else f" tok/s {item.target}/c {item.tokens_per_s_ratio:.3f}"
        extra = "" if item.ttft_p50_extra_ms is None else f" TTFT p50 {item.target}-c {item.ttft_p50_extra_ms:+.1f} ms"
        why = f" ({'; '.join(item.misses)})" if item.misses else ""
        lines.append(f"c={item.concurrency:<3} {item.target}:{ratio}{extra} failed {item.failed}: {item.verdict}{why}")
    return "\n".join(lines)


def write_json(report: BenchReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.model_dump_json(indent=2) + "\n")
