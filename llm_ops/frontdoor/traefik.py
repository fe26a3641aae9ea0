"""Traefik configuration as plain data, built from the list of models and their backends.

Per model M, the router matches ``Path(`/api/M`) || PathPrefix(`/api/M/`)``: names with dots work
and `/api/M-v2/...` never reaches M. Middlewares strip `^/api/[^/]+` and add `/api` back, so
`/api/M/worker_generate` reaches the worker as `/api/worker_generate`. Router ids may not contain
dots in Docker labels, so ids are sanitised while the rule keeps the real name.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

STRIP_MODEL = "llm-ops-strip-model"
ADD_API = "llm-ops-add-api"
ENTRYPOINT_HTTPS = "websecure"
ENTRYPOINT_HTTP = "web"
ENTRYPOINT_ADMIN = "traefik"
# Traefik closes idle connections to workers after this; workers keep them open longer
# (WorkerSettings.keep_alive_timeout), or a request can race the worker's close and fail.
BACKEND_IDLE_TIMEOUT = "60s"


@dataclass(frozen=True)
class Deployment:
    """One model served by one or more identical workers, reachable under each of its names."""

    names: tuple[str, ...]  # model names clients use in /api/<name>/; the first one names the service
    backends: tuple[str, ...]  # worker base URLs, e.g. "http://127.0.0.1:21002"


def router_id(model_name: str) -> str:
    """A Traefik-safe id for a model name; a hash keeps "a.b" and "a-b" apart."""
    safe = re.sub(r"[^A-Za-z0-9-]", "-", model_name).lower()
    if safe == model_name:
        return safe
    return f"{safe}-{hashlib.sha1(model_name.encode()).hexdigest()[:8]}"


def route_rule(model_name: str) -> str:
    return f"Path(`/api/{model_name}`) || PathPrefix(`/api/{model_name}/`)"


def static_config(
    *,
    public_host: str,
    https_port: int,
    http_port: int,
    admin_host: str,
    admin_port: int,
    dynamic_config_file: Path,
    access_log_file: Path | None = None,
    log_level: str = "INFO",
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "entryPoints": {
            ENTRYPOINT_HTTP: {
                "address": f"{_host(public_host)}:{http_port}",
                "http": {
                    "redirections": {"entryPoint": {"to": ENTRYPOINT_HTTPS, "scheme": "https", "permanent": True}}
                },
            },
            ENTRYPOINT_HTTPS: {"address": f"{_host(public_host)}:{https_port}", "http": {"tls": {}}},
            ENTRYPOINT_ADMIN: {"address": f"{_host(admin_host)}:{admin_port}"},
        },
        # The API serves on the admin entrypoint only: readiness probes read the loaded routers there.
        "api": {"insecure": True, "dashboard": False},
        "ping": {"entryPoint": ENTRYPOINT_ADMIN},
        "providers": {
            "providersThrottleDuration": "100ms",
            "file": {"filename": str(dynamic_config_file), "watch": True},
        },
        "serversTransport": {"forwardingTimeouts": {"idleConnTimeout": BACKEND_IDLE_TIMEOUT}},
        "log": {"level": log_level},
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
    }
    if access_log_file is not None:
        config["accessLog"] = {"filePath": str(access_log_file), "format": "json"}
    return config


def dynamic_config(deployments: Sequence[Deployment], *, cert_file: Path, key_file: Path) -> dict[str, Any]:
    routers: dict[str, Any] = {}
    services: dict[str, Any] = {}
    for deployment in deployments:
        service = router_id(deployment.names[0])
        services[service] = {
            "loadBalancer": {
                "servers": [{"url": url} for url in deployment.backends],
                "healthCheck": {"path": "/health", "interval": "2s", "timeout": "2s"},
            }
        }
        for name in deployment.names:
            routers[router_id(name)] = {
                "rule": route_rule(name),
                "entryPoints": [ENTRYPOINT_HTTPS],
                "middlewares": [STRIP_MODEL, ADD_API],
                "service": service,
                "tls": {},
            }
    certificate = {"certFile": str(cert_file), "keyFile": str(key_file)}
    return {
        "http": {
            "routers": routers,
            "services": services,
            "middlewares": {
                STRIP_MODEL: {"stripPrefixRegex": {"regex": ["^/api/[^/]+"]}},
                ADD_API: {"addPrefix": {"prefix": "/api"}},
            },
        },
        "tls": {
            "certificates": [certificate],
            "stores": {"default": {"defaultCertificate": certificate}},
            "options": {"default": {"minVersion": "VersionTLS12"}},
        },
    }


def write_yaml_atomically(path: Path, data: dict[str, Any]) -> None:
    """Traefik watches the file: it must never see a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as file:
        yaml.safe_dump(data, file, sort_keys=False)
    os.replace(tmp, path)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
