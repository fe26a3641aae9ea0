"""What an operator sees on the real stack: one request id in every log a request passes through,
the workers' Prometheus metrics (vLLM's own `vllm:*` series, and admission's `llm_ops_*`), and Traefik's."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from llm_ops.frontdoor.compose import ROUTER_SERVICE
from tests.conftest import samples, total
from tests.integration.conftest import CAPITAL_QUESTION, MODEL, Stack, chat

pytestmark = pytest.mark.integration


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects of a log; in the stack's log each line has honcho's "time process |" prefix."""
    objects = []
    for line in text.splitlines():
        start = line.find("{")
        if start >= 0:
            try:
                objects.append(json.loads(line[start:]))
            except json.JSONDecodeError:
                continue
    return objects


def logged_with_id(stack: Stack, request_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Traefik's access log entries and the servers' lines with `request_id` (waits for Traefik's writer)."""
    deadline = time.monotonic() + 5
    while True:
        access = [e for e in json_lines(stack.access_log.read_text()) if e.get("request_X-Request-Id") == request_id]
        servers = [e for e in json_lines(stack.log_file.read_text()) if e.get("request_id") == request_id]
        if (access and servers) or time.monotonic() > deadline:
            return access, servers
        time.sleep(0.2)  # polling, until the deadline


def test_traefik_gives_a_request_an_id_that_its_access_log_and_the_worker_log_and_answer_with(stack: Stack) -> None:
    with stack.client() as client:
        response = client.post(f"/api/{MODEL}/worker_generate", json=chat(max_new_tokens=8))
    request_id = response.headers["X-Request-Id"]
    assert response.status_code == 200 and len(request_id) == 32
    access, servers = logged_with_id(stack, request_id)
    assert [entry["RequestPath"] for entry in access] == [f"/api/{MODEL}/worker_generate"]
    assert "Authorization" not in json.dumps(access)
    finished = [line for line in servers if line.get("outcome") == "finished"]
    assert len(finished) == 1 and finished[0]["logger"] == "llm_ops.worker.fastchat", servers


def test_a_request_id_sent_by_the_client_is_kept_through_the_openai_api_to_the_worker(stack: Stack) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": CAPITAL_QUESTION[0]["text"]}], "max_tokens": 8}
    with stack.client(headers=stack.headers | {"X-Request-Id": "client-trace-0042"}) as client:
        response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200 and response.headers["X-Request-Id"] == "client-trace-0042"
    access, servers = logged_with_id(stack, "client-trace-0042")
    assert [entry["RequestPath"] for entry in access] == ["/v1/chat/completions"]
    assert {line["logger"] for line in servers} >= {"llm_ops.router.forward", "uvicorn.access"}, servers


def test_the_worker_exports_vllms_metrics_of_the_real_engine_and_admissions_own(stack: Stack) -> None:
    metrics = f"{stack.worker_url}/metrics"
    before = samples(metrics)
    answer = httpx.post(
        f"{stack.worker_url}/api/worker_generate_stream", json=chat(max_new_tokens=8), headers=stack.headers
    )
    last = json.loads([part for part in answer.content.split(b"\0") if part.strip()][-1])
    after = samples(metrics)

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    model = {"model_name": MODEL}
    assert grew("vllm:request_success_total", **model) == 1
    assert grew("vllm:generation_tokens_total", **model) == last["usage"]["completion_tokens"]
    assert grew("vllm:prompt_tokens_total", **model) == last["usage"]["prompt_tokens"]
    assert grew("vllm:time_to_first_token_seconds_count", **model) == 1
    assert grew("vllm:e2e_request_latency_seconds_count", **model) == 1
    idle = {("llm_ops_requests_running", frozenset()): 0.0, ("llm_ops_requests_waiting", frozenset()): 0.0}
    assert {key: after.get(key) for key in idle} == idle  # admission's series, on vLLM's /metrics


def test_traefik_exports_prometheus_metrics_of_the_router_service_on_its_admin_port_only(stack: Stack) -> None:
    with stack.client() as client:
        assert client.post(f"/api/{MODEL}/worker_get_status").status_code == 200
        assert client.get("/metrics").status_code == 404  # not on the public entrypoint
    scraped = samples(f"{stack.admin_url}/metrics")
    served = [
        dict(labels)
        for (name, labels) in scraped
        if name == "traefik_service_requests_total" and dict(labels)["service"].startswith(ROUTER_SERVICE)
    ]
    assert any(labels["code"] == "200" for labels in served), served
