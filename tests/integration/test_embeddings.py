"""The packaged embedding model through the front door: every route gives sentence-transformers' vectors.

The reference vectors are computed by sentence-transformers, from the same packaged weights (the
folder the worker serves). Every path must match them: cosine >= 0.999 for every vector, 384 dimensions,
unit length.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator

import httpx
import openai
import pytest

from llm_ops.models.embedding import ensure_embedding_model
from tests.conftest import (
    EMBEDDING_DIMENSIONS,
    assert_sentence_transformers_vectors,
    pointed_at,
    readme_curl_examples,
    run_bash,
)
from tests.integration.conftest import EMBEDDING_MODEL, MODEL, Stack

pytestmark = pytest.mark.integration
TEXTS = [
    "The capital of France is Paris.",
    "Paris is the largest city of France.",
    "A dragon learns to fly.",
    "",  # an empty text is a text: its vector is the special tokens'
]
MAX_TOKENS = 256  # the model's max_seq_length


@pytest.fixture
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    with httpx.Client(verify=stack.tls(), timeout=120) as http:
        yield openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.api_key, http_client=http, max_retries=0)


def from_base64(encoded: str) -> list[float]:
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def test_the_openai_client_gets_sentence_transformers_vectors_through_v1(client: openai.OpenAI) -> None:
    answer = client.embeddings.create(model=EMBEDDING_MODEL, input=TEXTS)
    assert [item.index for item in answer.data] == list(range(len(TEXTS)))
    assert_sentence_transformers_vectors([item.embedding for item in answer.data], TEXTS)
    assert answer.usage.prompt_tokens > len(TEXTS) * 2  # [CLS] and [SEP] at least


def test_the_embedding_model_is_listed_beside_the_chat_model(client: openai.OpenAI) -> None:
    assert {MODEL, EMBEDDING_MODEL} <= {model.id for model in client.models.list()}


def test_the_models_own_path_serves_base64_vectors(stack: Stack) -> None:
    with stack.client() as http:
        answer = http.post(
            f"/api/{EMBEDDING_MODEL}/v1/embeddings",
            json={"model": EMBEDDING_MODEL, "input": TEXTS, "encoding_format": "base64"},
        )
    assert answer.status_code == 200, answer.text
    assert_sentence_transformers_vectors([from_base64(item["embedding"]) for item in answer.json()["data"]], TEXTS)


def test_token_ids_embed_as_the_text_they_encode(stack: Stack) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ensure_embedding_model())
    ids = tokenizer(TEXTS[0]).input_ids
    with stack.client() as http:
        answer = http.post("/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": [ids]})
    assert answer.status_code == 200, answer.text
    assert_sentence_transformers_vectors([answer.json()["data"][0]["embedding"]], TEXTS[:1])


@pytest.mark.parametrize("encoding_format", [None, "float", "base64"])
def test_fastchats_worker_get_embeddings_answers_in_fastchats_shape(stack: Stack, encoding_format: str | None) -> None:
    body: dict[str, object] = {"model": EMBEDDING_MODEL, "input": TEXTS}
    if encoding_format:
        body["encoding_format"] = encoding_format
    with stack.client() as http:
        answer = http.post(f"/api/{EMBEDDING_MODEL}/worker_get_embeddings", json=body)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    vectors = [from_base64(v) for v in result["embedding"]] if encoding_format == "base64" else result["embedding"]
    assert_sentence_transformers_vectors(vectors, TEXTS)
    assert result["token_num"] > len(TEXTS) * 2 and result.get("error_code", 0) == 0


def test_one_text_is_a_list_of_one(stack: Stack) -> None:
    with stack.client() as http:
        answer = http.post(f"/api/{EMBEDDING_MODEL}/worker_get_embeddings", json={"input": TEXTS[0]})
    assert answer.status_code == 200, answer.text
    assert_sentence_transformers_vectors(answer.json()["embedding"], TEXTS[:1])


@pytest.mark.parametrize(
    ("path", "body", "says"),
    [
        ("/v1/embeddings", {"model": EMBEDDING_MODEL, "input": "word " * 300}, "maximum context length is 256"),
        ("/v1/embeddings", {"model": EMBEDDING_MODEL, "input": []}, "at least one prompt"),
        ("/v1/embeddings", {"model": EMBEDDING_MODEL, "input": "x", "dimensions": 64}, "dimensions"),
        ("/v1/embeddings", {"model": MODEL, "input": "x"}, "is a text generation model"),
        (
            "/v1/chat/completions",
            {"model": EMBEDDING_MODEL, "messages": [{"role": "user", "content": "hi"}]},
            "is an embedding model",
        ),
        ("/v1/completions", {"model": EMBEDDING_MODEL, "prompt": "hi"}, "is an embedding model"),
        ("/v1/responses", {"model": EMBEDDING_MODEL, "input": "hi"}, "is an embedding model"),
        (
            "/v1/messages",
            {"model": EMBEDDING_MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
            "is an embedding model",
        ),
    ],
    ids=[
        "too long",
        "no input",
        "dimensions",
        "chat model",
        "chat to embedding model",
        "completion to it",
        "response from it",
        "message from it",
    ],
)
def test_a_bad_openai_embedding_request_gets_a_4xx_that_says_why(
    stack: Stack, path: str, body: dict[str, object], says: str
) -> None:
    with stack.client() as http:
        answer = http.post(path, json=body)
    assert 400 <= answer.status_code < 500, answer.text
    assert says in answer.json()["error"]["message"]


@pytest.mark.parametrize(
    ("model", "body", "says"),
    [
        (EMBEDDING_MODEL, {"input": "word " * 300}, "maximum context length is 256"),
        (EMBEDDING_MODEL, {"input": []}, "input"),
        (MODEL, {"input": ["x"]}, "does not embed it"),
        (
            EMBEDDING_MODEL,
            {"model_identifier": EMBEDDING_MODEL, "generation_mode": "completion", "prompt": "hi"},
            "is an embedding model",
        ),
    ],
    ids=["too long", "no input", "chat model", "generate on the embedding model"],
)
def test_a_bad_fastchat_embedding_request_gets_a_4xx_with_fastchats_error_code(
    stack: Stack, model: str, body: dict[str, object], says: str
) -> None:
    route = "worker_generate" if "generation_mode" in body else "worker_get_embeddings"
    with stack.client() as http:
        answer = http.post(f"/api/{model}/{route}", json=body)
    assert 400 <= answer.status_code < 500, answer.text
    assert says in answer.json()["text"] and answer.json()["error_code"] >= 40000
    assert len(answer.json()["text"]) < MAX_TOKENS * 4  # a sentence, not an echo of the input


def test_the_readmes_embedding_curl_examples_work_as_written(stack: Stack) -> None:
    examples = [example for example in readme_curl_examples() if "embeddings" in example]
    assert len(examples) == 2, examples
    openai_answer, fastchat_answer = (json.loads(run_bash(pointed_at(example, stack))) for example in examples)
    assert [len(item["embedding"]) for item in openai_answer["data"]] == [EMBEDDING_DIMENSIONS, EMBEDDING_DIMENSIONS]
    assert [len(vector) for vector in fastchat_answer["embedding"]] == [EMBEDDING_DIMENSIONS]
