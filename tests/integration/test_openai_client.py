"""The OpenAI-compatible API through Traefik over verified TLS, used with the official `openai` client."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.conftest import MODEL, Stack

pytestmark = pytest.mark.integration
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    with httpx.Client(verify=stack.tls(), timeout=120) as http:
        yield openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.api_key, http_client=http, max_retries=0)


def test_the_models_are_listed(client: openai.OpenAI) -> None:
    assert MODEL in [model.id for model in client.models.list()]


def test_a_chat_completion_answers_with_the_models_template(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0)  # type: ignore[arg-type]
    choice = answer.choices[0]
    assert "Paris" in (choice.message.content or "") and choice.finish_reason == "stop"
    assert answer.usage is not None and answer.usage.prompt_tokens > 10 and answer.usage.completion_tokens > 0


def test_a_completion_continues_the_prompt(client: openai.OpenAI) -> None:
    answer = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert "Paris" in answer.choices[0].text


def test_a_streamed_chat_arrives_in_pieces_and_ends_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,  # type: ignore[arg-type]
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text and sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 3
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_max_tokens_and_stop_end_the_answer(client: openai.OpenAI) -> None:
    short = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=3, temperature=0)
    assert short.choices[0].finish_reason == "length" and short.usage and short.usage.completion_tokens == 3
    stopped = client.completions.create(model=MODEL, prompt="The capital of France is", stop=["Paris"], temperature=0)
    assert "Paris" not in stopped.choices[0].text and stopped.choices[0].finish_reason == "stop"


def test_a_seed_repeats_a_sampled_answer_and_n_gives_several(client: openai.OpenAI) -> None:
    def sample() -> list[str]:
        answer = client.completions.create(model=MODEL, prompt="My favourite colour is", max_tokens=8, seed=7, n=2)
        return [choice.text for choice in answer.choices]

    first = sample()
    assert len(first) == 2 and sample() == first


def test_a_bad_request_is_an_openai_bad_request_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=5)  # type: ignore[arg-type]


def test_an_unknown_model_is_an_openai_not_found_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="gpt-4"):
        client.chat.completions.create(model="gpt-4", messages=QUESTION)  # type: ignore[arg-type]


def test_the_readmes_python_example_works_as_written(stack: Stack) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("### The OpenAI-compatible API") :]
    example = section[section.index("```python\n") + len("```python\n") : section.index("```\n", 10)]
    example = example.replace("https://localhost:8443", stack.base_url).replace(
        ".llm-ops/tls/ca.pem", str(stack.ca_file)
    )
    env = os.environ | {"LLM_OPS_API_KEY": stack.api_key}  # the test stack requires keys; `make up`'s does not
    result = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
