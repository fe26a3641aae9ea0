"""Traefik in front of the native stack: verified TLS, the model's route, no prefix bleed, HTTP redirect.

Names with dots and every model of docker-compose.yml: tests/integration/test_compose_routing.py.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import warnings

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.conftest import LONG_STORY, MODEL, Stack, chat

pytestmark = pytest.mark.integration


def test_the_certificate_verifies_against_the_stacks_ca(stack: Stack) -> None:
    response = httpx.post(f"{stack.model_url()}/worker_get_status", verify=stack.tls(), headers=stack.headers)
    assert response.status_code == 200
    assert response.json()["model_names"] == [MODEL]


def test_a_client_that_does_not_trust_the_ca_is_refused_by_tls(stack: Stack) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.post(f"{stack.model_url()}/worker_get_status", verify=ssl.create_default_context())


def test_tls_older_than_1_2_is_refused(stack: Stack) -> None:
    context = stack.tls()
    with warnings.catch_warnings():  # asking for TLS 1.1 is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{stack.model_url()}/worker_get_status", verify=context)


@pytest.mark.parametrize(
    "path",
    [
        f"/api/{MODEL}-v2/worker_get_status",
        f"/api/{MODEL}v2/worker_get_status",
        "/api/Llama-2-7b-chat/worker_get_status",
        "/api/SmolLM2-0/worker_get_status",
        "/api/worker_get_status",
        "/worker_get_status",
    ],
)
def test_paths_of_models_that_are_not_deployed_get_404(client: httpx.Client, path: str) -> None:
    assert client.post(path).status_code == 404


def test_the_bare_model_path_gets_the_routers_404_in_fastchats_shape(client: httpx.Client) -> None:
    response = client.post(f"/api/{MODEL}")
    assert response.status_code == 404
    assert response.json() == {"text": f"no such endpoint: POST /api/{MODEL}", "error_code": 40001}


def test_http_redirects_to_https_keeping_method_and_path(stack: Stack) -> None:
    response = httpx.post(f"{stack.http_url}/api/{MODEL}/worker_get_status", follow_redirects=False)
    assert response.status_code == 308
    assert response.headers["location"] == f"{stack.model_url()}/worker_get_status"


def test_the_worker_health_endpoint_answers_without_a_key(stack: Stack) -> None:
    assert httpx.get(f"{stack.worker_url}/health").json()["status"] == "ok"


def test_the_containers_health_command_passes_on_a_serving_worker_and_fails_on_a_dead_one(stack: Stack) -> None:
    llm_ops = [sys.executable, "-m", "llm_ops", "health", "--url"]
    assert subprocess.run([*llm_ops, f"{stack.worker_url}/health"], timeout=60).returncode == 0
    dead = subprocess.run([*llm_ops, f"http://127.0.0.1:{free_port()}/health"], capture_output=True, timeout=60)
    assert dead.returncode == 1 and b"ConnectError" in dead.stderr


def test_a_stream_right_after_a_long_stream_elsewhere_is_not_cut(stack: Stack) -> None:
    """A long stream straight at the worker, then a short one through the front door, from a new client.

    Traefik reuses its idle connection to the worker for the second request. Run by hand, this
    pattern cut about one stream in three right after its headers when the worker used uvicorn's
    httptools parser and Traefik had no requestbody plugin (Go's proxy re-read a request body its
    server had closed: golang/go#15527). The worker uses httptools again, behind the plugin.
    """
    long, short = chat(messages=LONG_STORY, max_new_tokens=120), chat(messages=LONG_STORY, max_new_tokens=4)
    for _ in range(3):
        with stack.client() as client:
            with client.stream("POST", f"{stack.worker_url}/api/worker_generate_stream", json=long) as response:
                response.read()
            with client.stream("POST", f"/api/{MODEL}/worker_generate_stream", json=short) as response:
                assert response.read().count(b"\0") == 4
