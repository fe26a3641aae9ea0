"""What a user of the production deployment sees, through the containers: the README's curl examples, the
OpenAI API with the official client, the routes of two models whose names share a prefix, the HTTP
redirect, API keys, and Traefik's internals kept off the public entrypoint. TLS is always verified."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import (
    EMBEDDING_DIMENSIONS,
    answers_of,
    assert_sentence_transformers_vectors,
    pointed_at,
    readme_curl_examples,
    run_bash,
    wait_until,
)
from tests.deploy.conftest import DOTTED_MODEL, EMBEDDING_MODEL, PROJECT, Deployment
from tests.docker_engine import DEBIAN_IMAGE
from tests.integration.conftest import MODEL, assert_every_api_refuses, chat, completion

pytestmark = pytest.mark.deploy
WORKER_ENDPOINTS = ("/worker_generate", "/worker_generate_stream")


FASTCHAT_EXAMPLES = [example for example in readme_curl_examples() if "/worker_generate" in example]
API_EXAMPLES = [e for e in readme_curl_examples() if "/v1/responses" in e or "/v1/messages" in e]
EMBEDDING_EXAMPLES = [example for example in readme_curl_examples() if "embeddings" in example]


@pytest.mark.parametrize("endpoint", [None, *WORKER_ENDPOINTS], ids=["as written", "whole", "streamed"])
@pytest.mark.parametrize("example", FASTCHAT_EXAMPLES, ids=["chat", "completion"])
def test_the_readmes_curl_examples_answer_through_the_containers(
    deployed: Deployment, example: str, endpoint: str | None
) -> None:
    answers = answers_of(run_bash(pointed_at(example, deployed, endpoint)))
    assert answers and all(answer["error_code"] == 0 for answer in answers), answers
    assert answers[-1]["finish_reason"] in ("stop", "length") and str(answers[-1]["text"]).strip()


@pytest.mark.parametrize("example", API_EXAMPLES, ids=["responses", "messages"])
def test_the_readmes_responses_and_messages_curl_examples_answer_through_the_containers(
    deployed: Deployment, example: str
) -> None:
    answer = json.loads(run_bash(pointed_at(example, deployed)))
    assert "Paris" in answer_text(answer), answer


def answer_text(answer: dict[str, Any]) -> str:
    """The text of a Responses API answer (its last output item, the message) or of a Messages API one."""
    content = answer["output"][-1]["content"] if answer.get("object") == "response" else answer["content"]
    return str(content[0]["text"])


@pytest.fixture
def openai_client(deployed: Deployment) -> Iterator[openai.OpenAI]:
    with httpx.Client(verify=deployed.tls(), timeout=120) as http:
        base_url = f"{deployed.base_url}/v1"
        yield openai.OpenAI(base_url=base_url, api_key=deployed.api_key, http_client=http, max_retries=0)


def test_the_openai_client_lists_both_models_and_chats_and_streams_through_v1(openai_client: openai.OpenAI) -> None:
    assert {MODEL, DOTTED_MODEL} <= {model.id for model in openai_client.models.list()}
    question = [{"role": "user", "content": "What is the capital of France?"}]
    answer = openai_client.chat.completions.create(model=MODEL, messages=question, temperature=0)  # type: ignore[arg-type]
    assert "Paris" in (answer.choices[0].message.content or "")
    stream = openai_client.completions.create(
        model=DOTTED_MODEL, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True
    )
    pieces = [chunk.choices[0].text for chunk in stream if chunk.choices]
    assert len(pieces) > 1 and "Paris" in "".join(pieces)


def test_the_embedding_service_gives_sentence_transformers_vectors_through_v1(openai_client: openai.OpenAI) -> None:
    texts = ["The capital of France is Paris.", "A dragon learns to fly."]
    answer = openai_client.embeddings.create(model=EMBEDDING_MODEL, input=texts)
    assert_sentence_transformers_vectors([item.embedding for item in answer.data], texts)


@pytest.mark.parametrize("example", EMBEDDING_EXAMPLES, ids=["openai", "fastchat"])
def test_the_readmes_embedding_curl_examples_answer_through_the_containers(deployed: Deployment, example: str) -> None:
    answer = json.loads(run_bash(pointed_at(example, deployed)))
    vectors = [item["embedding"] for item in answer["data"]] if "data" in answer else answer["embedding"]
    assert vectors and all(len(vector) == EMBEDDING_DIMENSIONS for vector in vectors), answer


@pytest.mark.parametrize("model", [MODEL, DOTTED_MODEL])
def test_each_model_answers_only_under_its_own_name_at_its_own_path(deployed: Deployment, model: str) -> None:
    with deployed.client() as client:
        status = client.post(f"/api/{model}/worker_get_status")
        openai_models = client.get(f"/api/{model}/v1/models")
        fastchat = client.post(f"/api/{model}/worker_generate", json=chat(model_identifier=model, max_new_tokens=8))
    assert status.status_code == 200 and status.json()["model_names"] == [model]
    assert [entry["id"] for entry in openai_models.json()["data"]] == [model]
    assert fastchat.status_code == 200 and "Paris" in fastchat.json()["text"]


@pytest.mark.parametrize("path", ["/api/SmolLM2-135M-Instruct-v2/worker_generate", "/api/SmolLM2/worker_generate"])
def test_a_name_that_only_starts_like_a_served_name_gets_404(deployed: Deployment, path: str) -> None:
    with deployed.client() as client:
        assert client.post(path, json=completion()).status_code == 404


def test_http_redirects_to_the_published_https_port_keeping_method_and_path(deployed: Deployment) -> None:
    response = httpx.post(f"{deployed.http_url}/api/{MODEL}/worker_generate", follow_redirects=False)
    assert response.status_code == 308
    assert response.headers["location"] == f"{deployed.base_url}/api/{MODEL}/worker_generate"


def test_the_certificate_verifies_against_the_test_ca_and_only_against_it(deployed: Deployment) -> None:
    with deployed.client() as client:
        assert client.get("/v1/models").status_code == 200
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{deployed.base_url}/v1/models")  # the system's CAs do not know it


@pytest.mark.parametrize("key", [None, "sk-llm-ops-wrong-5555555555"], ids=["no key", "wrong key"])
def test_every_route_refuses_a_request_without_a_valid_key(deployed: Deployment, key: str | None) -> None:
    assert_every_api_refuses(deployed, key)


def test_prometheus_metrics_are_on_the_admin_port_only(deployed: Deployment) -> None:
    with deployed.client() as client:
        assert client.post(f"/api/{MODEL}/worker_get_status").status_code == 200
        assert client.get("/metrics").status_code == 404
    metrics = httpx.get(f"{deployed.admin_url}/metrics", timeout=5).text
    assert re.search(r'traefik_service_requests_total\{code="200".*service="router@docker"', metrics)


@pytest.mark.parametrize("path", ["/dashboard/", "/api/http/routers", "/api/rawdata", "/ping"])
def test_traefiks_dashboard_api_and_ping_are_absent_from_the_public_entrypoint(deployed: Deployment, path: str) -> None:
    with deployed.client() as client:
        assert client.get(path).status_code == 404
    assert httpx.get(f"{deployed.admin_url}{path}", timeout=5).status_code == 200


def routed_container(name: str, project: str, *docker_args: str) -> list[str]:
    """`docker run` of a container `name` that sleeps (on purpose: it only has to exist), in compose project
    `project`, with labels that give Traefik a router of that name."""
    labels = {
        "com.docker.compose.project": project,
        "traefik.enable": "true",
        f"traefik.http.routers.{name}.rule": f"Path(`/{name}`)",
        f"traefik.http.routers.{name}.entrypoints": "websecure",
        f"traefik.http.services.{name}.loadbalancer.server.port": "80",
    }
    label_args = [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
    run = ["docker", "run", "--detach", "--rm", "--name", name]
    return [*run, *label_args, *docker_args, DEBIAN_IMAGE, "sleep", "600"]


def docker_routers(deployed: Deployment) -> set[str]:
    routers = httpx.get(f"{deployed.admin_url}/api/http/routers", timeout=5).json()
    return {router["name"] for router in routers if router["provider"] == "docker"}


def test_traefik_reads_the_labels_of_this_projects_containers_only(deployed: Deployment) -> None:
    """A decoy of another project starts, then a marker of this one: once Traefik routes to the marker, it has
    read the containers as they were after the decoy started (it reads them all at each event)."""
    decoy, marker = "llm-ops-test-decoy", "llm-ops-test-marker"
    subprocess.run(routed_container(decoy, "another-project"), check=True, capture_output=True)
    try:
        network = f"{PROJECT}-models"  # the one Traefik reaches this project's containers on
        subprocess.run(routed_container(marker, PROJECT, "--network", network), check=True, capture_output=True)
        wait_until(lambda: f"{marker}@docker" in docker_routers(deployed), 30, "Traefik to read the marker's labels")
        routers = docker_routers(deployed)
    finally:
        subprocess.run(["docker", "rm", "--force", decoy, marker], capture_output=True)
    assert routers == {"router@docker", f"{marker}@docker"}  # the models are reached through the router
