"""Traefik outside Docker, configured from docker-compose.yml.

Traefik's static configuration is the compose file's `traefik` command with what only Docker has taken
out (the Docker provider, Let's Encrypt) and local addresses put in. The routes are the router service's
labels (every model's path goes to the router, which picks the replica: `llm_ops.router`), turned into
the file-provider configuration the Docker provider would have built from them, with loopback servers
in place of containers. The shared middlewares and TLS options are the same files (traefik/dynamic/),
and a self-signed certificate stands in for Let's Encrypt's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llm_ops.frontdoor.certs import TLSFiles
from llm_ops.frontdoor.compose import ComposeError, ComposeFile, interpolate
from llm_ops.settings import ConfigurationError

ENTRYPOINT_HTTPS = "websecure"
ENTRYPOINT_HTTP = "web"
ENTRYPOINT_ADMIN = "traefik"  # API, dashboard, ping, metrics: never published
FILE_PROVIDER_DIRECTORY = "providers.file.directory"
PLUGINS_DIRECTORY = "/plugins-local"  # in Traefik's container; Traefik reads ./plugins-local
# Flags that only make sense inside Docker: the Docker provider, and Let's Encrypt (it needs a public name).
DOCKER_ONLY_FLAGS = ("providers.docker", "certificatesresolvers", f"entrypoints.{ENTRYPOINT_HTTPS}.http.tls")
_LIST_FIELDS = {"entrypoints", "middlewares"}
# Traefik takes its static configuration from the first traefik.{toml,yaml,yml} it finds in
# /etc/traefik, $XDG_CONFIG_HOME, $HOME/.config or its working directory, and then ignores every
# flag. The native stack runs it with flags, so none of these may exist (see `traefik_environment`).
STATIC_FILE_NAMES = ("traefik.toml", "traefik.yaml", "traefik.yml")
SYSTEM_CONFIG_DIRECTORY = Path("/etc/traefik")


@dataclass(frozen=True)
class LocalAddresses:
    """Where a Traefik outside Docker listens."""

    public_host: str
    https_port: int
    http_port: int
    admin_host: str
    admin_port: int


def labels_to_dynamic_config(labels: Mapping[str, str], server_urls: Sequence[str]) -> dict[str, Any]:
    """The file-provider configuration Traefik's Docker provider builds from one service's labels.

    `server_urls` stand in for the containers (the Docker provider uses each container's address
    and the `loadbalancer.server.port` label).
    """
    config = _decode_labels(labels)
    for service in config.get("http", {}).get("services", {}).values():
        balancer = service.setdefault("loadbalancer", {})
        balancer.pop("server", None)
        balancer["servers"] = [{"url": url} for url in server_urls]
    return config


def _decode_labels(labels: Mapping[str, str]) -> dict[str, Any]:
    """`traefik.http.routers.ID.rule=R` -> {"http": {"routers": {"ID": {"rule": R}}}}; keys lower-cased
    (Traefik ignores their case), ids kept as written."""
    config: dict[str, Any] = {}
    for key, value in labels.items():
        parts = key.split(".")
        if parts[0] != "traefik" or len(parts) < 5:  # traefik.enable, traefik.docker.network: provider options
            continue
        *path, field = (part if index == 3 else part.lower() for index, part in enumerate(parts))
        node = config
        for part in path[1:]:
            node = node.setdefault(part, {})
        node[field] = value.split(",") if field in _LIST_FIELDS else value
    return config


def local_traefik_args(
    compose_flags: Sequence[str],
    addresses: LocalAddresses,
    dynamic_dir: Path,
    access_log: Path,
    log_level: str,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """The compose file's Traefik flags for a Traefik outside Docker."""
    local = {
        f"entrypoints.{ENTRYPOINT_HTTP}.address": f"{_host(addresses.public_host)}:{addresses.http_port}",
        f"entrypoints.{ENTRYPOINT_HTTPS}.address": f"{_host(addresses.public_host)}:{addresses.https_port}",
        # Outside Docker the HTTPS entrypoint listens on the public port itself: redirect to it by name.
        f"entrypoints.{ENTRYPOINT_HTTP}.http.redirections.entrypoint.to": ENTRYPOINT_HTTPS,
        f"entrypoints.{ENTRYPOINT_HTTPS}.http.tls": "true",  # with the certificate of certificates.yml
        f"entrypoints.{ENTRYPOINT_ADMIN}.address": f"{_host(addresses.admin_host)}:{addresses.admin_port}",
        FILE_PROVIDER_DIRECTORY: str(dynamic_dir),
        "accesslog.filepath": str(access_log),
        "log.level": log_level,
    }
    kept = [
        (key, value)
        for key, value in (_split_flag(flag) for flag in compose_flags)
        if not key.startswith(DOCKER_ONLY_FLAGS) and key not in local
    ]
    return [f"--{key}" if value is None else f"--{key}={interpolate(value, environ)}" for key, value in kept] + [
        f"--{key}={value}" for key, value in local.items()
    ]


def write_local_front_door(
    compose: ComposeFile,
    backends: Mapping[str, Sequence[str]],
    tls: TLSFiles,
    addresses: LocalAddresses,
    directory: Path,
    log_level: str = "INFO",
) -> list[str]:
    """Write the dynamic configuration for `backends` (compose service with Traefik labels -> its servers' URLs) and the
    plugins into `directory`; return Traefik's flags. Run Traefik in `directory`: it loads local
    plugins from ./plugins-local."""
    for static_file in STATIC_FILE_NAMES:  # e.g. left there by an older version of the native stack
        (directory / static_file).unlink(missing_ok=True)
    plugins = directory / "plugins-local"
    shutil.rmtree(plugins, ignore_errors=True)
    shutil.copytree(compose.host_path(PLUGINS_DIRECTORY), plugins)
    dynamic_dir = directory / "dynamic"
    dynamic_dir.mkdir(parents=True, exist_ok=True)
    for stale in dynamic_dir.glob("*.yml"):
        stale.unlink()
    shared_dir = compose.host_path(_flag_value(compose.traefik_command, FILE_PROVIDER_DIRECTORY))
    for shared in sorted(shared_dir.glob("*.yml")):
        shutil.copyfile(shared, dynamic_dir / f"shared-{shared.name}")
    for service_name, urls in backends.items():
        routes = labels_to_dynamic_config(compose.service(service_name).labels, urls)
        write_yaml_atomically(dynamic_dir / f"routes-{service_name}.yml", routes)
    write_yaml_atomically(dynamic_dir / "certificates.yml", certificate_config(tls))
    return local_traefik_args(compose.traefik_command, addresses, dynamic_dir, directory / "access.log", log_level)


def certificate_config(tls: TLSFiles) -> dict[str, Any]:
    certificate = {"certFile": str(tls.cert_file), "keyFile": str(tls.key_file)}
    return {"tls": {"certificates": [certificate], "stores": {"default": {"defaultCertificate": certificate}}}}


def write_yaml_atomically(path: Path, data: dict[str, Any]) -> None:
    """Traefik watches the file: it must never see a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as file:
        yaml.safe_dump(data, file, sort_keys=False)
    os.replace(tmp, path)


def _split_flag(flag: str) -> tuple[str, str | None]:
    key, has_value, value = flag.removeprefix("--").partition("=")
    return key.lower(), value if has_value else None


def _flag_value(flags: Sequence[str], key: str) -> str:
    for flag_key, value in map(_split_flag, flags):
        if flag_key == key and value is not None:
            return value
    raise ComposeError(f"the traefik service has no --{key}")


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def traefik_environment(directory: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of a Traefik run in `directory` with flags: its home and config home are
    `directory` (no traefik.yml there), and a system-wide /etc/traefik/traefik.yml is refused."""
    found = [SYSTEM_CONFIG_DIRECTORY / name for name in STATIC_FILE_NAMES if (SYSTEM_CONFIG_DIRECTORY / name).exists()]
    if found:
        raise ConfigurationError(
            f"{found[0]} exists: Traefik would read it and ignore the native stack's configuration; move it away"
        )
    return dict(environ) | {"HOME": str(directory), "XDG_CONFIG_HOME": str(directory)}
