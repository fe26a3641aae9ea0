"""LangChain's OpenAI classes against the front door, unchanged, over verified TLS; and docs/retrieval.md as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

from tests.integration.conftest import EMBEDDING_MODEL, MODEL, Stack

pytestmark = pytest.mark.integration
RETRIEVAL_DOC = Path(__file__).parents[2] / "docs" / "retrieval.md"


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(verify=stack.tls(), timeout=120) as client:
        yield client


def test_chatopenai_answers_whole_and_streamed(stack: Stack, http: httpx.Client) -> None:
    chat = ChatOpenAI(
        model=MODEL, base_url=f"{stack.base_url}/v1", api_key=stack.api_key, http_client=http, temperature=0
    )  # type: ignore[call-arg]
    whole = chat.invoke("What is the capital of France?")
    assert "Paris" in str(whole.content)
    pieces = [str(chunk.content) for chunk in chat.stream("What is the capital of France?")]
    assert len([piece for piece in pieces if piece]) > 3 and "Paris" in "".join(pieces)


def test_openaiembeddings_embeds_documents_and_queries(stack: Stack, http: httpx.Client) -> None:
    embeddings = OpenAIEmbeddings(
        model=EMBEDDING_MODEL,
        base_url=f"{stack.base_url}/v1",
        api_key=stack.api_key,  # type: ignore[arg-type]
        http_client=http,
        check_embedding_ctx_length=False,
    )
    documents = embeddings.embed_documents(["Paris is in France.", "The Nile is in Africa."])
    query = embeddings.embed_query("Which city is in France?")
    assert len(documents) == 2 and {len(vector) for vector in [*documents, query]} == {384}
    scores = [sum(q * d for q, d in zip(query, document, strict=True)) for document in documents]
    assert scores[0] > scores[1]


def test_the_retrieval_example_in_the_docs_runs_as_written(stack: Stack, tmp_path: Path) -> None:
    (code,) = re.findall(r"```python\n(.*?)```", RETRIEVAL_DOC.read_text(), flags=re.DOTALL)
    script = tmp_path / "retrieval.py"
    script.write_text(code)
    environment = os.environ | {
        "LLM_OPS_URL": stack.base_url,
        "LLM_OPS_API_KEY": stack.api_key,
        "LLM_OPS_CA_FILE": str(stack.ca_file),
    }
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "nearest passage: Paris is the capital" in done.stdout and "Paris" in done.stdout.split("answer:")[1]
