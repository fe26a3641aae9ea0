"""Traefik configuration is built as data: routes per model name, shared service, TLS from our files."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from llm_ops.frontdoor.traefik import (
    ADD_API,
    STRIP_MODEL,
    Deployment,
    dynamic_config,
    route_rule,
    router_id,
    static_config,
    write_yaml_atomically,
)

CERT, KEY = Path("/tls/server.pem"), Path("/tls/server-key.pem")


def test_router_ids_are_traefik_safe_and_distinct_for_distinct_names() -> None:
    names = ["Qwen2.5-0.5B", "Qwen2-5-0-5B", "qwen2.5-0.5b", "llama-2-7b-chat", "a_b"]
    ids = [router_id(name) for name in names]
    assert all(re.fullmatch(r"[a-z0-9-]+", rid) for rid in ids)
    assert len(set(ids)) == len(ids)
    assert router_id("llama-2-7b-chat") == "llama-2-7b-chat"


def test_the_rule_keeps_the_real_name_and_matches_only_that_model() -> None:
    assert route_rule("Qwen2.5-0.5B") == "Path(`/api/Qwen2.5-0.5B`) || PathPrefix(`/api/Qwen2.5-0.5B/`)"


def test_every_name_gets_a_router_to_the_deployments_one_service() -> None:
    deployment = Deployment(("SmolLM2-135M-Instruct", "smol.v1"), ("http://127.0.0.1:1", "http://127.0.0.1:2"))
    http = dynamic_config([deployment], cert_file=CERT, key_file=KEY)["http"]
    service = router_id("SmolLM2-135M-Instruct")
    assert set(http["routers"]) == {router_id("SmolLM2-135M-Instruct"), router_id("smol.v1")}
    assert {router["service"] for router in http["routers"].values()} == {service}
    balancer = http["services"][service]["loadBalancer"]
    assert balancer["servers"] == [{"url": "http://127.0.0.1:1"}, {"url": "http://127.0.0.1:2"}]
    assert balancer["healthCheck"]["path"] == "/health"
    for router in http["routers"].values():
        assert router["middlewares"] == [STRIP_MODEL, ADD_API]
        assert router["entryPoints"] == ["websecure"]
        assert router["tls"] == {}


def test_the_model_prefix_is_stripped_whatever_characters_the_name_has() -> None:
    middlewares = dynamic_config([], cert_file=CERT, key_file=KEY)["http"]["middlewares"]
    strip = re.compile(middlewares[STRIP_MODEL]["stripPrefixRegex"]["regex"][0])
    for name in ["Qwen2.5-0.5B", "llama-2-7b-chat", "a_b"]:
        path = f"/api/{name}/worker_generate"
        rest = path[strip.match(path).end() :]  # type: ignore[union-attr]
        assert middlewares[ADD_API]["addPrefix"]["prefix"] + rest == "/api/worker_generate"


def test_tls_uses_our_certificate_as_default_and_requires_tls_1_2() -> None:
    tls = dynamic_config([], cert_file=CERT, key_file=KEY)["tls"]
    ours = {"certFile": str(CERT), "keyFile": str(KEY)}
    assert tls["certificates"] == [ours]
    assert tls["stores"]["default"]["defaultCertificate"] == ours
    assert tls["options"]["default"]["minVersion"] == "VersionTLS12"


def test_http_redirects_to_https_and_the_api_stays_on_the_admin_entrypoint() -> None:
    static = static_config(
        public_host="0.0.0.0",
        https_port=8443,
        http_port=8080,
        admin_host="127.0.0.1",
        admin_port=8090,
        dynamic_config_file=Path("/x/dynamic.yml"),
    )
    entry_points = static["entryPoints"]
    assert entry_points["web"]["address"] == "0.0.0.0:8080"
    assert entry_points["web"]["http"]["redirections"]["entryPoint"] == {
        "to": "websecure",
        "scheme": "https",
        "permanent": True,
    }
    assert entry_points["websecure"]["address"] == "0.0.0.0:8443"
    assert entry_points["traefik"]["address"] == "127.0.0.1:8090"
    assert static["api"]["dashboard"] is False


def test_ipv6_addresses_are_bracketed() -> None:
    static = static_config(
        public_host="::1",
        https_port=1,
        http_port=2,
        admin_host="::1",
        admin_port=3,
        dynamic_config_file=Path("d.yml"),
    )
    assert static["entryPoints"]["websecure"]["address"] == "[::1]:1"


def test_config_files_are_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "traefik" / "dynamic.yml"
    write_yaml_atomically(target, {"a": 1})
    write_yaml_atomically(target, {"b": 2})
    assert yaml.safe_load(target.read_text()) == {"b": 2}
    assert [p.name for p in target.parent.iterdir()] == ["dynamic.yml"]
