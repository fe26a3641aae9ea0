"""Traefik outside Docker: the router's labels become file-provider routes, compose flags become local flags."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llm_ops.frontdoor import traefik
from llm_ops.frontdoor.certs import TLSFiles
from llm_ops.frontdoor.traefik import (
    LocalAddresses,
    certificate_config,
    labels_to_dynamic_config,
    local_traefik_args,
    traefik_environment,
    write_yaml_atomically,
)
from llm_ops.settings import ConfigurationError

SHARED = Path(__file__).parents[2] / "traefik" / "dynamic" / "llm-ops.yml"
ADDRESSES = LocalAddresses("127.0.0.1", 1443, 1080, "127.0.0.1", 1090)


ROUTER_LABELS = {
    "traefik.enable": "true",
    "traefik.http.routers.router.rule": "PathPrefix(`/api/`) || PathPrefix(`/v1/`)",
    "traefik.http.routers.router.entrypoints": "websecure",
    "traefik.http.routers.router.middlewares": "llm-ops-request-id@file,llm-ops-retry@file",
    "traefik.http.routers.router.service": "router",
    "traefik.http.services.router.loadbalancer.server.port": "8000",
    "traefik.http.services.router.loadbalancer.healthcheck.path": "/health",
}


def test_labels_become_the_routes_the_docker_provider_would_build_with_our_servers() -> None:
    config = labels_to_dynamic_config(ROUTER_LABELS, ["http://127.0.0.1:1", "http://127.0.0.1:2"])
    assert config == {
        "http": {
            "routers": {
                "router": {
                    "rule": "PathPrefix(`/api/`) || PathPrefix(`/v1/`)",
                    "entrypoints": ["websecure"],
                    "middlewares": ["llm-ops-request-id@file", "llm-ops-retry@file"],
                    "service": "router",
                },
            },
            "services": {
                "router": {
                    "loadbalancer": {
                        "healthcheck": {"path": "/health"},
                        "servers": [{"url": "http://127.0.0.1:1"}, {"url": "http://127.0.0.1:2"}],
                    }
                }
            },
        }
    }


def test_label_keys_are_read_case_insensitively_but_ids_keep_their_case() -> None:
    config = labels_to_dynamic_config({"traefik.http.Routers.MyModel.Rule": "Path(`/x`)"}, [])
    assert config == {"http": {"routers": {"MyModel": {"rule": "Path(`/x`)"}}}}


COMPOSE_FLAGS = [
    "--log.level=${TRAEFIK_LOG_LEVEL:-INFO}",
    "--accesslog.format=json",
    "--entrypoints.web.address=:80",
    "--entrypoints.web.http.redirections.entrypoint.to=:${HTTPS_PORT:-8443}",
    "--entrypoints.websecure.address=:443",
    "--entrypoints.websecure.http.tls.certresolver=le",
    "--entrypoints.websecure.http.tls.domains[0].main=${LLM_OPS_DOMAIN:?set LLM_OPS_DOMAIN}",
    "--entrypoints.traefik.address=:8090",
    "--api.insecure=true",
    "--providers.docker.exposedbydefault=false",
    "--providers.file.directory=/etc/traefik/dynamic",
    "--certificatesresolvers.le.acme.email=${ACME_EMAIL:?set ACME_EMAIL}",
    "--ping",
]


def test_local_flags_drop_docker_and_lets_encrypt_and_listen_where_asked() -> None:
    args = local_traefik_args(COMPOSE_FLAGS, ADDRESSES, Path("/d"), Path("/a.log"), "DEBUG", environ={})
    assert not [a for a in args if "docker" in a or "certresolver" in a or "acme" in a or "domains" in a]
    assert args == [
        "--accesslog.format=json",
        "--api.insecure=true",
        "--ping",
        "--entrypoints.web.address=127.0.0.1:1080",
        "--entrypoints.websecure.address=127.0.0.1:1443",
        "--entrypoints.web.http.redirections.entrypoint.to=websecure",
        "--entrypoints.websecure.http.tls=true",
        "--entrypoints.traefik.address=127.0.0.1:1090",
        "--providers.file.directory=/d",
        "--accesslog.filepath=/a.log",
        "--log.level=DEBUG",
    ]


def test_ipv6_addresses_are_bracketed() -> None:
    addresses = LocalAddresses("::1", 1, 2, "::1", 3)
    args = local_traefik_args([], addresses, Path("/d"), Path("/a.log"), "INFO")
    assert "--entrypoints.websecure.address=[::1]:1" in args


def test_tls_needs_1_2_and_the_native_certificate_is_the_default() -> None:
    assert yaml.safe_load(SHARED.read_text())["tls"]["options"]["default"]["minVersion"] == "VersionTLS12"
    tls = certificate_config(TLSFiles.in_dir(Path("/tls")))["tls"]
    ours = {"certFile": "/tls/server.pem", "keyFile": "/tls/server-key.pem"}
    assert tls == {"certificates": [ours], "stores": {"default": {"defaultCertificate": ours}}}


def test_config_files_are_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "traefik" / "dynamic.yml"
    write_yaml_atomically(target, {"a": 1})
    write_yaml_atomically(target, {"b": 2})
    assert yaml.safe_load(target.read_text()) == {"b": 2}
    assert [p.name for p in target.parent.iterdir()] == ["dynamic.yml"]


def test_traefik_runs_with_a_home_of_its_own_so_that_no_users_traefik_yml_replaces_its_flags(tmp_path: Path) -> None:
    environment = traefik_environment(tmp_path, {"HOME": "/root", "PATH": "/bin"})
    assert environment == {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path), "PATH": "/bin"}


def test_a_system_wide_traefik_yml_is_refused_as_it_would_replace_the_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(traefik, "SYSTEM_CONFIG_DIRECTORY", tmp_path)
    (tmp_path / "traefik.toml").write_text("[log]\n")
    with pytest.raises(ConfigurationError, match="traefik.toml exists: Traefik would read it"):
        traefik_environment(tmp_path / "state", {})
