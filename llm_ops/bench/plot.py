"""The PNG beside the JSON: output tokens/s, TTFT p50 and end-to-end p50 against concurrency, per target."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from llm_ops.bench.report import BenchReport
from llm_ops.bench.stats import Summary

PANELS: tuple[tuple[str, Callable[[Summary], float | None]], ...] = (
    ("output tokens/s", lambda summary: summary.output_tokens_per_s),
    ("TTFT p50 (ms)", lambda summary: summary.ttft_ms.p50),
    ("end-to-end p50 (ms)", lambda summary: summary.e2e_ms.p50),
)


def draw(report: BenchReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4), constrained_layout=True)
    levels = [level.concurrency for level in report.levels]
    for axis, (title, value) in zip(axes, PANELS, strict=True):
        for target in report.targets:
            points = [value(level.summaries[target.key]) for level in report.levels]
            values = [float("nan") if point is None else point for point in points]
            axis.plot(levels, values, marker="o", label=f"{target.key} {target.name}")
        axis.set_title(title)
        axis.set_xlabel("concurrency")
        axis.set_xscale("log", base=2)
        axis.set_xticks(levels, [str(level) for level in levels])
        axis.grid(True, alpha=0.3)
    axes[0].legend()
    figure.suptitle(f"{report.model}, {report.machine.cpu_count} CPUs: stack (a), worker (b), vLLM server (c)")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
