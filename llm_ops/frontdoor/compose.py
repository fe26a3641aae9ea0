"""What the native stack and the tests read from docker-compose.yml: Traefik's flags and the model services.

docker-compose.yml is the one description of the deployment. Each model service names a start script
(its entrypoint) and the worker flags (its command); the native stack runs one such service outside
Docker, with the controller and router services' commands, and `llm_ops.frontdoor.traefik` turns the
router's labels into the file provider configuration that Traefik's Docker provider would have built.
"""

from __future__ import annotations

import os
import re
from argparse import Namespace
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llm_ops.settings import ConfigurationError

TRAEFIK_SERVICE = "traefik"
CONTROLLER_SERVICE = "controller"
ROUTER_SERVICE = "router"
# A service that runs one of these is a model service; each starts the worker kind it is named for (`--kind`).
START_SCRIPTS = {"start_chat.sh": "chat", "start_completion.sh": "completion", "start_embedding.sh": "embedding"}
# Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}.
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<bare>[A-Za-z_]\w*)|\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})"
)


class ComposeError(ConfigurationError):
    """docker-compose.yml does not describe a deployment LLM Ops can run."""


@dataclass(frozen=True)
class ModelService:
    name: str
    start_script: Path  # the entrypoint, found beside docker-compose.yml
    command: list[str]  # the start script's arguments: worker flags
    labels: dict[str, str]

    @property
    def kind(self) -> str:
        """The worker kind its start script starts."""
        return START_SCRIPTS[self.start_script.name]

    def worker_args(self, start_script_args: list[str]) -> Namespace:
        """The worker's flags, parsed as `llm-ops worker` parses them (vLLM's parser): what the start script
        passes first (its kind, and `start_script_args`), then the command."""
        from llm_ops.worker.launch import parse_worker_args

        try:
            return parse_worker_args(["--kind", self.kind, *start_script_args, *self.command])
        except SystemExit as error:  # argparse has printed what is wrong
            raise ComposeError(f"service {self.name}: bad worker flags in its command (see above)") from error


@dataclass(frozen=True)
class ComposeService:
    """A service of LLM Ops' own image that is not a model: the controller, the OpenAI-compatible API."""

    name: str
    entrypoint: list[str]
    command: list[str]
    labels: dict[str, str]


@dataclass(frozen=True)
class ComposeFile:
    path: Path
    traefik_command: list[str]
    traefik_volumes: list[str]
    models: dict[str, ModelService]
    services: dict[str, ComposeService]

    def service(self, name: str) -> ComposeService:
        if name not in self.services:
            raise ComposeError(f"{self.path} has no {name} service")
        return self.services[name]

    def model(self, service: str) -> ModelService:
        if service not in self.models:
            raise ComposeError(f"{self.path} has no model service {service!r}; it has: {', '.join(self.models)}")
        return self.models[service]

    def host_path(self, container_path: str) -> Path:
        """The folder on the host that Traefik's container sees at `container_path`."""
        for volume in self.traefik_volumes:
            source, _, rest = volume.partition(":")
            if rest.split(":")[0] == container_path and source.startswith("."):
                return (self.path.parent / source).resolve()
        raise ComposeError(f"the {TRAEFIK_SERVICE} service mounts no local folder at {container_path}")


def load_compose(path: Path) -> ComposeFile:
    if not path.is_file():
        raise ComposeError(f"no compose file at {path} (run from the repository root, or pass --compose-file)")
    services: dict[str, Any] = (yaml.safe_load(path.read_text()) or {}).get("services") or {}
    if TRAEFIK_SERVICE not in services:
        raise ComposeError(f"{path} has no {TRAEFIK_SERVICE} service")
    traefik = services.pop(TRAEFIK_SERVICE)
    models = {
        name: _model_service(path.parent, name, service)
        for name, service in services.items()
        if Path(_entrypoint(service)[0] if _entrypoint(service) else "").name in START_SCRIPTS
    }
    others = {
        name: ComposeService(name, _entrypoint(service), _command(name, service), _labels(service))
        for name, service in services.items()
        if name not in models
    }
    return ComposeFile(path, list(traefik.get("command") or []), list(traefik.get("volumes") or []), models, others)


def interpolate(value: str, environ: Mapping[str, str] | None = None) -> str:
    """Compose's variable substitution, for the Traefik flags the native stack keeps."""
    env = os.environ if environ is None else environ

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name, op, arg = match["bare"] or match["name"], match["op"] or "", match["arg"] or ""
        value = env.get(name)
        if value is not None and not (value == "" and op.startswith(":")):
            return value
        if op.endswith("?"):
            raise ComposeError(f"${{{name}}}: {arg or 'not set'}")
        return arg if op.endswith("-") else ""

    return _VARIABLE.sub(substitute, value)


def _model_service(directory: Path, name: str, service: dict[str, Any]) -> ModelService:
    script = directory / Path(_entrypoint(service)[0]).name
    return ModelService(name, script, _command(name, service), _labels(service))


def _entrypoint(service: dict[str, Any]) -> list[str]:
    entrypoint = service.get("entrypoint") or []
    return entrypoint.split() if isinstance(entrypoint, str) else [str(part) for part in entrypoint]


def _command(name: str, service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    if isinstance(command, str):
        raise ComposeError(f"service {name}: write the command as a list of flags")
    return [str(arg) for arg in command]


def _labels(service: dict[str, Any]) -> dict[str, str]:
    labels = service.get("labels") or {}
    if isinstance(labels, list):  # the "key=value" list form
        labels = dict(label.split("=", 1) for label in labels)
    return {str(key): str(value) for key, value in labels.items()}
