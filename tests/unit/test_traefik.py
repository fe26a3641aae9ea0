"""Traefik outside Docker: labels become file-provider routes, compose flags become local flags."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from llm_ops.frontdoor import traefik
from llm_ops.frontdoor.certs import TLSFiles
from llm_ops.frontdoor.compose import ModelService
from llm_ops.frontdoor.traefik import (
    MODEL_MIDDLEWARES,
    OPENAI_MODEL_MIDDLEWARES,
    LocalAddresses,
    certificate_config,
    labels_to_dynamic_config,
    local_traefik_args,
    openai_route_rule,
    route_problems,
    route_rule,
    traefik_environment,
    write_yaml_atomically,
)
from llm_ops.settings import ConfigurationError

SHARED = Path(__file__).parents[2] / "traefik" / "dynamic" / "llm-ops.yml"
ADDRESSES = LocalAddresses("127.0.0.1", 1443, 1080, "127.0.0.1", 1090)


def model_labels(router: str, name: str, **overrides: str) -> dict[str, str]:
    """The labels of a model service as docker-compose.yml writes them (a router for FastChat's routes, one
    for vLLM's OpenAI routes); `overrides` by label suffix, of the first label that has it."""
    labels = {
        "traefik.enable": "true",
        f"traefik.http.routers.{router}.rule": route_rule(name),
        f"traefik.http.routers.{router}.entrypoints": "websecure",
        f"traefik.http.routers.{router}.middlewares": ",".join(MODEL_MIDDLEWARES),
        f"traefik.http.routers.{router}.service": router,
        f"traefik.http.routers.{router}-v1.rule": openai_route_rule(name),
        f"traefik.http.routers.{router}-v1.entrypoints": "websecure",
        f"traefik.http.routers.{router}-v1.middlewares": ",".join(OPENAI_MODEL_MIDDLEWARES),
        f"traefik.http.routers.{router}-v1.service": router,
        f"traefik.http.services.{router}.loadbalancer.server.port": "21002",
        f"traefik.http.services.{router}.loadbalancer.healthcheck.path": "/health",
    }
    for suffix, value in overrides.items():
        key = next(k for k in labels if k.endswith(suffix))
        labels[key] = value
    return labels


def service(labels: dict[str, str]) -> ModelService:
    return ModelService("m", Path("start_chat.sh"), [], labels)


def test_the_rule_keeps_the_real_name_and_matches_only_that_model() -> None:
    assert route_rule("Qwen2.5-0.5B") == "Path(`/api/Qwen2.5-0.5B`) || PathPrefix(`/api/Qwen2.5-0.5B/`)"


def test_the_openai_rule_matches_only_vllms_openai_routes_of_that_model() -> None:
    assert openai_route_rule("Qwen2.5-0.5B") == (
        "PathPrefix(`/api/Qwen2.5-0.5B/v1/`) || Path(`/api/Qwen2.5-0.5B/tokenize`) "
        "|| Path(`/api/Qwen2.5-0.5B/detokenize`)"
    )


def test_labels_become_the_routes_the_docker_provider_would_build_with_our_servers() -> None:
    config = labels_to_dynamic_config(
        model_labels("qwen2-5", "Qwen2.5-0.5B"), ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    )
    assert config == {
        "http": {
            "routers": {
                "qwen2-5": {
                    "rule": route_rule("Qwen2.5-0.5B"),
                    "entrypoints": ["websecure"],
                    "middlewares": MODEL_MIDDLEWARES,
                    "service": "qwen2-5",
                },
                "qwen2-5-v1": {
                    "rule": openai_route_rule("Qwen2.5-0.5B"),
                    "entrypoints": ["websecure"],
                    "middlewares": OPENAI_MODEL_MIDDLEWARES,
                    "service": "qwen2-5",
                },
            },
            "services": {
                "qwen2-5": {
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


def test_the_compose_labels_route_safely() -> None:
    assert route_problems(service(model_labels("qwen2-5", "Qwen2.5-0.5B")), ["Qwen2.5-0.5B"], 21002) == []


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        (model_labels("m", "M", rule="PathPrefix(`/api/M`)"), "is not Path"),  # /api/M-v2 would reach M
        (model_labels("m.v1", "M"), "ids may not contain dots"),  # refused in Docker labels
        (model_labels("m", "M", middlewares="llm-ops-strip-model@file"), "middlewares must be"),
        (model_labels("m", "M", middlewares="buffer@file," + ",".join(MODEL_MIDDLEWARES)), "middle"),
        (model_labels("m", "M", entrypoints="web,websecure"), "only the websecure entrypoint"),
        (model_labels("m", "M", **{"healthcheck.path": "/"}), "healthcheck.path=/health"),
        (model_labels("m", "M", **{"server.port": "8000"}), "the worker listens on 21002"),
        (model_labels("m", "Other"), "served name M has no router"),
    ],
)
def test_unsafe_or_incomplete_routing_labels_are_reported(labels: dict[str, str], problem: str) -> None:
    problems = route_problems(service(labels), ["M"], 21002)
    assert any(problem in p for p in problems), problems


def test_a_service_must_define_exactly_one_traefik_service() -> None:
    assert route_problems(service({"traefik.enable": "true"}), ["M"], 21002) == [
        "service m: its labels must define exactly one Traefik service, not 0"
    ]


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


def test_the_shared_middlewares_turn_a_model_path_into_the_worker_path_whatever_the_name() -> None:
    middlewares = yaml.safe_load(SHARED.read_text())["http"]["middlewares"]
    strip = re.compile(middlewares["llm-ops-strip-model"]["stripPrefixRegex"]["regex"][0])
    for name in ["Qwen2.5-0.5B", "llama-2-7b-chat", "a_b"]:
        path = f"/api/{name}/worker_generate"
        rest = path[strip.match(path).end() :]  # type: ignore[union-attr]
        assert middlewares["llm-ops-add-api"]["addPrefix"]["prefix"] + rest == "/api/worker_generate"


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
