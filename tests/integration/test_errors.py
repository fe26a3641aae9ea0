"""Every invalid request gets a 4xx and a FastChat error code through the whole stack."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.integration.conftest import MODEL, chat

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        pytest.param(chat(messages=None), 400, 40001, id="chat-without-messages"),
        pytest.param(chat(generation_mode="completion", messages=None), 400, 40001, id="completion-without-prompt"),
        pytest.param(chat(messages=[{"role": "wizard", "text": "Hi"}]), 400, 40001, id="unknown-role"),
        pytest.param(chat(max_new_tokens="many"), 400, 40001, id="wrong-type"),
        pytest.param(chat(temperature=-0.5), 400, 40302, id="negative-temperature"),
        pytest.param(chat(top_p=0), 400, 40302, id="top-p-zero"),
        pytest.param(chat(top_p=1.5), 400, 40302, id="top-p-above-one"),
        pytest.param(chat(max_new_tokens=0), 400, 40302, id="max-new-tokens-zero"),
        pytest.param(chat(messages=[{"role": "user", "text": "word " * 9000}]), 400, 40303, id="context-overflow"),
        pytest.param(chat(model_identifier="Llama-2-7b-chat"), 404, 40301, id="model-not-served-here"),
    ],
)
@pytest.mark.parametrize("endpoint", ["worker_generate", "worker_generate_stream"])
def test_invalid_request_gets_its_documented_error(
    client: httpx.Client, endpoint: str, body: dict[str, Any], status: int, code: int
) -> None:
    response = client.post(f"/api/{MODEL}/{endpoint}", json=body)
    assert response.status_code == status
    error = response.json()
    assert error["error_code"] == code
    assert len(error["text"]) > 10


def test_malformed_json_gets_a_validation_error(client: httpx.Client) -> None:
    response = client.post(
        f"/api/{MODEL}/worker_generate", content=b'{"model_identifier": "', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error_code"] == 40001
    assert "not valid JSON" in response.json()["text"]


def test_a_prompt_longer_than_the_context_gets_context_overflow(client: httpx.Client) -> None:
    body = {"model_identifier": MODEL, "generation_mode": "completion", "prompt": "hello " * 9000}
    response = client.post(f"/api/{MODEL}/worker_generate", json=body)
    assert response.status_code == 400
    assert response.json()["error_code"] == 40303
