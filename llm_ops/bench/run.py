"""`llm-ops bench`: the run. For each concurrency level and round, each target in turn (the order
rotates, so none always goes first) gets its requests with exactly `concurrency` in flight; then the
table, the checks against vLLM's own server, the JSON and the plot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from llm_ops.access import api_keys_from_environment, authorization_headers
from llm_ops.bench import cpu, plot, report
from llm_ops.bench.report import BenchReport, LevelResult, TargetInfo, VLLMLaunch
from llm_ops.bench.settings import TARGET_NAMES, BenchSettings, TargetKey
from llm_ops.bench.stats import SLO, RequestRecord, summarize
from llm_ops.bench.targets import Target, http_client, openai_target, worker_target
from llm_ops.bench.vllm_client import VLLMBenchResult, run_vllm_bench, vllm_bench_table
from llm_ops.bench.vllm_server import (
    LOOPBACK,
    ServerError,
    free_port,
    reference_environment,
    running_server,
    server_command,
    service_argv,
)
from llm_ops.settings import ConfigurationError
from llm_ops.worker.launch import parse_worker_args, resolve_defaults, served_names, worker_options
from llm_ops.worker.vllm_api import BENCH_NAMES, KV_CACHE_SPACE_VARIABLE, check_vllm_surface


class BenchError(Exception):
    """The run could not be made (a target does not answer, ...): the command exits nonzero."""


@dataclass
class Block:
    """What one target got at one level in one round."""

    records: list[RequestRecord]
    wall_s: float
    cpu_s: dict[str, float]  # by kind of process (llm_ops.bench.cpu)


def rotated(targets: Sequence[Target], turn: int) -> list[Target]:
    shift = turn % len(targets)
    return [*targets[shift:], *targets[:shift]]


async def run_block(target: Target, settings: BenchSettings, concurrency: int, label: str) -> Block:
    """`requests_at(concurrency)` requests, `concurrency` of them in flight until the last ones."""
    # Open the pool's connections first, so that no measured request pays for a connection (or a TLS handshake).
    await asyncio.gather(*(target.send(1) for _ in range(concurrency)))
    total = settings.requests_at(concurrency)
    pending = iter(range(total))
    records: list[RequestRecord] = []
    with tqdm(total=total, desc=label, unit="req", disable=not settings.progress, file=sys.stderr) as bar:

        async def client() -> None:
            for _ in pending:  # shared by the clients: each takes the next request
                records.append(await target.send(settings.max_new_tokens))
                bar.update()

        before, start = cpu.snapshot(), time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall, after = time.perf_counter() - start, cpu.snapshot()
    return Block(records, wall, cpu.used(before, after))


async def measure(targets: Sequence[Target], settings: BenchSettings) -> list[LevelResult]:
    slo = SLO(settings.slo_ttft_ms, settings.slo_tpot_ms, settings.slo_e2e_ms)
    levels = []
    for index, concurrency in enumerate(settings.concurrency):
        blocks: dict[str, list[Block]] = {target.key: [] for target in targets}
        for round_ in range(settings.rounds):
            for target in rotated(targets, index * settings.rounds + round_):
                label = f"c={concurrency} round {round_ + 1} {target.key} {target.name}"
                blocks[target.key].append(await run_block(target, settings, concurrency, label))
        levels.append(_level(concurrency, settings.requests_at(concurrency), blocks, slo))
    return levels


def _level(concurrency: int, requests: int, blocks: dict[str, list[Block]], slo: SLO) -> LevelResult:
    summaries = {
        key: summarize([r for block in runs for r in block.records], sum(block.wall_s for block in runs), slo)
        for key, runs in blocks.items()
    }
    per_round = {
        key: [summarize(block.records, block.wall_s, slo).output_tokens_per_s for block in runs]
        for key, runs in blocks.items()
    }
    cpu_s = {key: cpu.summed(block.cpu_s for block in runs) for key, runs in blocks.items()}
    return LevelResult(
        concurrency=concurrency,
        requests_per_round=requests,
        summaries=summaries,
        round_tokens_per_s=per_round,
        cpu_s=cpu_s,
    )


async def warm_up(targets: Sequence[Target], settings: BenchSettings) -> None:
    """`warmup` requests per target, not measured; the first that fails ends the run."""
    for target in targets:
        for _ in range(settings.warmup):
            record = await target.send(settings.max_new_tokens)
            if not record.ok:
                raise BenchError(f"target {target.key} ({target.name}) at {target.url} does not answer: {record.error}")


async def run_against(
    targets: Sequence[Target], settings: BenchSettings, model: str, vllm: VLLMLaunch | None = None
) -> tuple[BenchReport, Path]:
    """Measure, print the table and the checks, write the JSON and the PNG; returns the report and its path."""
    levels = await measure(targets, settings)
    found = report.checks(levels)
    result = BenchReport(
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        machine=report.machine_info(),
        model=model,
        settings=settings.model_dump(mode="json", exclude={"api_key"}),
        targets=[TargetInfo(key=target.key, name=target.name, url=target.url) for target in targets],
        vllm=vllm,
        levels=levels,
        checks=found,
    )
    names = {target.key: target.name for target in targets}
    print(f"\n{report.table(levels, names)}\n\n{report.cpu_table(levels, names)}\n\n{report.verdicts(found)}")
    output = output_path(settings)
    report.write_json(result, output)
    plot.draw(result, output.with_suffix(".png"))
    print(f"\nwrote {output} and {output.with_suffix('.png')}")
    return result, output


def output_path(settings: BenchSettings) -> Path:
    return settings.output or Path("benchmarks/results") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"


def key_headers(settings: BenchSettings) -> dict[str, str]:
    """--api-key, or else what the stack's own components send with LLM_OPS_API_KEYS."""
    return authorization_headers(frozenset({settings.api_key}) if settings.api_key else api_keys_from_environment())


def service_worker(settings: BenchSettings) -> list[str]:
    """The compose service's worker flags: the model's name, and how vLLM's server starts."""
    return service_argv(settings.compose_file, settings.service, settings.worker_flags)


async def our_targets(settings: BenchSettings, model: str, stack: contextlib.AsyncExitStack) -> list[Target]:
    """Targets a, b, d, e and f, as selected: the FastChat routes (a, b) and the OpenAI ones (d, e, f)."""
    front_door = settings.stack_url.rstrip("/")
    bases: dict[TargetKey, str] = {
        "a": f"{front_door}/api/{model}",
        "b": f"{settings.worker_url.rstrip('/')}/api",
        "d": front_door,
        "e": f"{front_door}/api/{model}",
        "f": settings.worker_url.rstrip("/"),
    }
    targets: list[Target] = []
    for key, base in bases.items():
        if key not in settings.targets:
            continue
        ca_file = settings.ca_file if base.startswith("https:") else None
        if ca_file is not None and not ca_file.is_file():
            raise BenchError(f"--ca-file {ca_file}: no such file (the stack writes its CA there when it starts)")
        client = http_client(max(settings.concurrency), settings.request_timeout, ca_file, key_headers(settings))
        await stack.enter_async_context(client)
        name = TARGET_NAMES[key]
        if key in ("a", "b"):
            targets.append(worker_target(key, name, base, client, model, settings.prompt, settings.stream_text))
        else:
            targets.append(openai_target(key, name, base, client, model, settings.prompt))
    return targets


async def bench(settings: BenchSettings) -> None:
    settings = settings.model_copy(update={"output": output_path(settings)})  # one timestamp for all files
    model = settings.model or served_names(parse_worker_args(service_worker(settings)))[0]
    async with contextlib.AsyncExitStack() as stack:
        targets = await our_targets(settings, model, stack)
        await warm_up(targets, settings)  # before vLLM takes minutes to start
        vllm = None
        if "c" in settings.targets:
            base, vllm = (settings.vllm_url, None) if settings.vllm_url else await start_vllm(settings, stack)
            client = http_client(max(settings.concurrency), settings.request_timeout)
            await stack.enter_async_context(client)
            reference = openai_target("c", TARGET_NAMES["c"], base, client, model, settings.prompt)
            await warm_up([reference], settings)
            targets.append(reference)
        result, output = await run_against(targets, settings, model, vllm)
        if settings.vllm_bench_prompts:
            result.vllm_bench = await vllm_bench_each(settings, model, {t.key: t.url for t in targets})
            print(f"\n{vllm_bench_table(result.vllm_bench)}")
            report.write_json(result, output)


async def vllm_bench_each(settings: BenchSettings, model: str, urls: dict[str, str]) -> list[VLLMBenchResult]:
    """vLLM's own benchmark client against each OpenAI target that ran (c, d, e, f), one after the other."""
    worker_argv = service_worker(settings)
    tokenizer = resolve_defaults(parse_worker_args(worker_argv), worker_options(parse_worker_args(worker_argv))).model
    key = key_headers(settings).get("Authorization", "").removeprefix("Bearer ")
    results = []
    for target in ("c", "d", "e", "f"):
        if target not in urls:
            continue
        base_url = urls[target].removesuffix("/v1/completions")
        environment = {"OPENAI_API_KEY": key} if key and target != "c" else {}
        if base_url.startswith("https:"):
            environment["SSL_CERT_FILE"] = str(settings.ca_file)
        result_file = output_path(settings).with_suffix(f".vllm-bench-{target}.json")
        results.append(
            await run_vllm_bench(
                TARGET_NAMES[target],
                base_url,
                model,
                str(tokenizer),
                settings.vllm_bench_prompts,
                settings.vllm_bench_concurrency,
                result_file,
                environment,
            )
        )
    return results


async def start_vllm(settings: BenchSettings, stack: contextlib.AsyncExitStack) -> tuple[str, VLLMLaunch]:
    """vLLM's server with the worker's model and engine settings, stopped when `stack` closes."""
    worker = service_worker(settings)
    port = settings.vllm_port or free_port()
    command = server_command(worker, port)
    environment = reference_environment(worker)
    log = output_path(settings).with_suffix(".vllm.log")
    print(f"starting vLLM's server (log: {log}): {shlex.join(command)}", file=sys.stderr, flush=True)
    base = f"http://{LOOPBACK}:{port}"
    started = await stack.enter_async_context(
        running_server(command, environment, base, log, settings.vllm_start_timeout)
    )
    print(f"vLLM's server answered after {started:.0f} s", file=sys.stderr, flush=True)
    added = {name: environment[name] for name in (KV_CACHE_SPACE_VARIABLE, "HF_HUB_OFFLINE")}
    return base, VLLMLaunch(command=command, environment=added, start_s=started)


def run_bench(settings: BenchSettings) -> int:
    """The command's exit status: 0 once it measured (whatever the verdicts), 1 if it could not."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would bury the progress bars
    try:
        check_vllm_surface(also=BENCH_NAMES)
        asyncio.run(bench(settings))
    except (BenchError, ServerError, ConfigurationError) as error:
        print(f"llm-ops bench: {error}", file=sys.stderr)
        return 1
    return 0
