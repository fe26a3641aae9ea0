"""deploy/swarm/docker-stack.yml, over docker-compose.yml, is what `docker stack deploy` runs (docs/deployment.md,
"Docker Swarm"): checked without an engine. The two-node test (tests/swarm) runs it for real."""

from __future__ import annotations

import json
import os
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.docker_engine import COMPOSE, ROOT
from tests.unit.test_deployment_files import COMPOSE as COMPOSE_FILE
from tests.unit.test_deployment_files import MODELS

STACK_FILE = ROOT / "deploy" / "swarm" / "docker-stack.yml"
SECRET_KEY = "svc-must-not-be-rendered-0123456789"


class ComposeTagsLoader(yaml.SafeLoader):
    """Reads Compose's merge tags (!override, !reset) as the plain values they tag."""


def untagged(loader: yaml.SafeLoader, _: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


ComposeTagsLoader.add_multi_constructor("!", untagged)


def stack_file() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(STACK_FILE.read_text(), Loader=ComposeTagsLoader)  # noqa: S506 (a SafeLoader)
    return loaded


def test_every_model_service_of_the_compose_file_has_the_swarm_model_settings() -> None:
    stack = stack_file()
    services, swarm_model = stack["services"], stack["x-swarm-model"]
    assert {service.name for service in MODELS} <= services.keys()
    for service in MODELS:
        assert services[service.name] == swarm_model, service.name
    assert swarm_model["deploy"]["placement"]["constraints"] == ["node.labels.gpu == true"]


@cache
def rendered(profile: str = "smoke") -> dict[str, Any]:
    """The stack scripts/swarm-stack.sh prints, as an operator runs it with a .env (here: its variables)."""
    environment = os.environ | {
        "COMPOSE": str(COMPOSE),
        "LLM_OPS_DOMAIN": "llm.example.com",
        "ACME_EMAIL": "ops@example.com",
        "LLM_OPS_SERVICE_KEY": SECRET_KEY,
    }
    script = ROOT / "scripts" / "swarm-stack.sh"
    done = subprocess.run(["bash", str(script), "--profile", profile], capture_output=True, text=True, env=environment)
    assert done.returncode == 0, done.stderr
    stack: dict[str, Any] = json.loads(done.stdout)
    return stack


@pytest.mark.slow  # Compose v2 (the test extra), jq and the docker CLI: `make test` installs them
def test_the_rendered_stack_is_accepted_by_docker_stack_and_holds_no_key(tmp_path: Path) -> None:
    path = tmp_path / "stack.json"
    path.write_text(json.dumps(rendered()))
    environment = os.environ | {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}  # checked by the CLI alone
    command = ["docker", "stack", "config", "--compose-file", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    assert done.returncode == 0, done.stderr
    assert SECRET_KEY not in path.read_text()


@pytest.mark.slow
def test_the_stack_keeps_the_grace_periods_routes_traefik_on_a_manager_and_takes_the_keys_from_secrets() -> None:
    services = rendered()["services"]
    for name in ("traefik", "router", *(service.name for service in MODELS)):
        assert services[name]["stop_grace_period"] == "45s", name
    traefik = services["traefik"]
    assert traefik["deploy"]["placement"]["constraints"] == ["node.role == manager"]
    assert {port["mode"] for port in traefik["ports"]} == {"host"}
    assert not any(port["target"] == 8090 for port in traefik["ports"])  # the admin entrypoint stays unpublished
    assert services["router"]["deploy"]["labels"] == services["router"]["labels"] != {}
    network = rendered()["networks"]["models"]
    assert (network["name"], network["driver"], network["attachable"]) == ("llm-ops-models", "overlay", True)
    for name, service in services.items():
        if name != "traefik":
            assert not {"LLM_OPS_API_KEYS", "LLM_OPS_SERVICE_KEY"} & service["environment"].keys(), name
            assert "/run/secrets/llm-ops-service-key" in service["environment"].values(), name


def test_the_compose_file_still_gives_the_router_its_labels_for_the_docker_provider() -> None:
    assert COMPOSE_FILE.service("router").labels["traefik.enable"] == "true"
