"""deploy/kubernetes/ proven offline, without a cluster: every overlay renders with `kubectl kustomize`, every
object validates against Kubernetes 1.37's schemas or Traefik's vendored CRD, and the manifests say what
docker-compose.yml says (tests/unit/kubernetes_manifests.py); a manifest that says otherwise fails."""

from __future__ import annotations

import copy
import functools
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from llm_ops.frontdoor.compose import load_compose
from llm_ops.settings import DEFAULT_EMBEDDING_SERVICE, DEFAULT_SERVICE
from llm_ops.worker.launch import CONTAINER_PORT, worker_options
from tests.unit.kubernetes_manifests import (
    KEYS_SECRET,
    KUBERNETES_DIR,
    ROOT,
    TRAEFIK_CRDS,
    WORKER_ADDRESS_ARG,
    KubectlMissing,
    Manifest,
    Overlay,
    disagreements,
    invalid_objects,
    render,
)

pytestmark = pytest.mark.slow  # runs kubectl

COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE = load_compose(COMPOSE_FILE)
RAW_SERVICES = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
OVERLAYS = {
    # What `docker compose up -d` runs: every model service outside a profile, a GPU each.
    "gpu": Overlay("gpu", frozenset(name for name in COMPOSE.models if "profiles" not in RAW_SERVICES[name]), True),
    # The packaged models, which need neither a download nor a GPU.
    "cpu": Overlay("cpu", frozenset({DEFAULT_SERVICE, DEFAULT_EMBEDDING_SERVICE}), False),
}
GPU = OVERLAYS["gpu"]


@functools.cache
def _rendered(overlay: str) -> list[Manifest]:
    return render(OVERLAYS[overlay].path)


def rendered(overlay: str) -> list[Manifest]:
    """The overlay's objects, a copy the test may break."""
    return copy.deepcopy(_rendered(overlay))


def find(objects: list[Manifest], kind: str, name: str) -> Manifest:
    (found,) = [manifest for manifest in objects if (manifest["kind"], manifest["metadata"]["name"]) == (kind, name)]
    return found


def container(objects: list[Manifest], name: str) -> Manifest:
    containers: list[Manifest] = find(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"]
    return containers[0]


def test_every_overlay_in_the_folder_is_checked() -> None:
    assert sorted(path.name for path in (KUBERNETES_DIR / "overlays").iterdir()) == sorted(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_and_every_object_validates_against_kubernetes_and_traefiks_schemas(
    overlay: str,
) -> None:
    objects = rendered(overlay)
    assert objects
    assert invalid_objects(objects) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_agree_with_compose_on_models_flags_ports_keys_and_drain(overlay: str) -> None:
    assert disagreements(COMPOSE_FILE, rendered(overlay), OVERLAYS[overlay]) == []


def test_validation_refuses_an_unknown_field_in_a_kubernetes_object_and_in_a_traefik_object() -> None:
    objects = rendered("gpu")
    container(objects, "router")["imagee"] = "llm-ops:latest"
    find(objects, "IngressRoute", "router")["spec"]["routes"][0]["middleware"] = []
    errors = invalid_objects(objects)
    assert len(errors) == 2
    assert "Deployment/router" in errors[0] and "'imagee' was unexpected" in errors[0]
    assert "IngressRoute/router" in errors[1] and "'middleware' was unexpected" in errors[1]


def test_the_vendored_traefik_crds_are_exactly_the_custom_kinds_the_manifests_use() -> None:
    vendored = {yaml.safe_load(path.read_text())["spec"]["names"]["kind"] for path in TRAEFIK_CRDS.glob("*.yaml")}
    groups = {manifest["kind"]: manifest["apiVersion"].split("/")[0] for o in OVERLAYS for manifest in rendered(o)}
    custom = {kind for kind, group in groups.items() if "." in group and not group.endswith("k8s.io")}
    assert vendored == custom == {"IngressRoute"}


def test_no_key_or_certificate_is_in_the_manifests_only_references_to_the_secrets() -> None:
    for overlay in OVERLAYS:
        text = yaml.safe_dump_all(rendered(overlay))
        assert "kind: Secret" not in text
        assert f"name: {KEYS_SECRET}" in text and "secretName: llm-ops-tls" in text


def test_the_worker_address_the_manifests_give_overrides_the_start_scripts_hostname() -> None:
    # The start script's own flag comes first, then the Deployment's args: the last one is the worker's.
    args = container(rendered("gpu"), "llama-2-7b-chat")["args"]
    start_script = ["--port", str(CONTAINER_PORT), f"--worker-address=http://llama-pod:{CONTAINER_PORT}/api"]
    parsed = COMPOSE.model("llama-2-7b-chat").worker_args([*start_script, *args[:1]])
    assert worker_options(parsed).worker_address == WORKER_ADDRESS_ARG.split("=", 1)[1]


def change_flag(objects: list[Manifest]) -> None:
    container(objects, "llama-2-7b-chat")["args"][-1] = "--max-model-len=2048"


def shorten_grace_period(objects: list[Manifest]) -> None:
    find(objects, "Deployment", "mistral-7b-v0-1")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30


def drop_service_key(objects: list[Manifest]) -> None:
    worker = container(objects, "all-minilm-l6-v2")
    worker["env"] = [variable for variable in worker["env"] if variable["name"] != "LLM_OPS_SERVICE_KEY"]


def require_api_keys(objects: list[Manifest]) -> None:
    (api_keys,) = [entry for entry in container(objects, "router")["env"] if entry["name"] == "LLM_OPS_API_KEYS"]
    del api_keys["valueFrom"]["secretKeyRef"]["optional"]


def drop_model(objects: list[Manifest]) -> None:
    objects.remove(find(objects, "Deployment", "mistral-7b-v0-1"))


def drop_gpu(objects: list[Manifest]) -> None:
    del container(objects, "llama-2-7b-chat")["resources"]


def change_start_script(objects: list[Manifest]) -> None:
    container(objects, "mistral-7b-v0-1")["command"] = ["/app/start_chat.sh"]


def change_worker_port(objects: list[Manifest]) -> None:
    container(objects, "llama-2-7b-chat")["ports"][0]["containerPort"] = 8080


def shorten_startup(objects: list[Manifest]) -> None:
    container(objects, "llama-2-7b-chat")["startupProbe"]["failureThreshold"] = 30


def move_controller(objects: list[Manifest]) -> None:
    find(objects, "Service", "controller")["spec"]["ports"][0]["port"] = 21000


def one_router(objects: list[Manifest]) -> None:
    find(objects, "Deployment", "router")["spec"]["replicas"] = 1


def change_route(objects: list[Manifest]) -> None:
    find(objects, "IngressRoute", "router")["spec"]["routes"][0]["match"] = "PathPrefix(`/`)"


def change_traefik_flag(objects: list[Manifest]) -> None:
    args = container(objects, "traefik")["args"]
    args[args.index("--entrypoints.websecure.transport.lifecycle.gracetimeout=40s")] = (
        "--entrypoints.websecure.transport.lifecycle.gracetimeout=10s"
    )


def publish_admin_port(objects: list[Manifest]) -> None:
    ports = find(objects, "Service", "traefik")["spec"]["ports"]
    ports.append({"name": "admin", "port": 8090, "targetPort": "traefik"})


@pytest.mark.parametrize(
    ("breaks", "problem"),
    [
        (change_flag, "worker llama-2-7b-chat: args"),
        (shorten_grace_period, "worker mistral-7b-v0-1: terminationGracePeriodSeconds 30"),
        (drop_service_key, "worker all-minilm-l6-v2: keys from the llm-ops-keys Secret"),
        (require_api_keys, "router: keys from the llm-ops-keys Secret"),
        (drop_model, "no Deployment mistral-7b-v0-1"),
        (drop_gpu, "worker llama-2-7b-chat: nvidia.com/gpu None, wanted 1"),
        (change_start_script, "worker mistral-7b-v0-1: command"),
        (change_worker_port, "worker llama-2-7b-chat: its container does not listen on 21002"),
        (shorten_startup, "worker llama-2-7b-chat: its startup probe gives up before compose's start_period"),
        (move_controller, "controller: its Service does not serve port 21001"),
        (one_router, "router: 1 replicas, compose runs 2"),
        (change_route, "router: IngressRoute's rule"),
        (change_traefik_flag, "traefik: --entrypoints.websecure.transport.lifecycle.gracetimeout=10s"),
        (publish_admin_port, "Service traefik publishes Traefik's admin entrypoint"),
    ],
    ids=lambda value: value.__name__ if callable(value) else "",
)
def test_a_manifest_that_says_otherwise_than_compose_fails_the_agreement_check(
    breaks: Callable[[list[Manifest]], None], problem: str
) -> None:
    objects = rendered("gpu")
    breaks(objects)
    found = disagreements(COMPOSE_FILE, objects, GPU)
    assert any(line.startswith(problem) for line in found), found


def test_a_flag_changed_in_a_models_manifest_file_fails_the_agreement_check(tmp_path: Path) -> None:
    # The whole path, as an operator's edit takes it: the file, kustomize, the check.
    for folder in ("deploy", "traefik"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    model = tmp_path / "deploy" / "kubernetes" / "overlays" / "gpu" / "llama-2-7b-chat.yaml"
    model.write_text(model.read_text().replace("--max-model-len=4096", "--max-model-len=2048"))
    (problem,) = disagreements(COMPOSE_FILE, render(model.parent), GPU)
    assert problem.startswith("worker llama-2-7b-chat: args") and "--max-model-len=2048" in problem


def test_without_kubectl_rendering_fails_saying_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/nowhere/python")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(KubectlMissing, match="no kubectl beside this Python nor on PATH: `make install`"):
        render(GPU.path)
