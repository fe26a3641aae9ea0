"""Fixtures of the unit tests: the async backend, the vLLM stand-in (tests/unit/fake_vllm.py) and a client
of a worker over it."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from llm_ops.models.default import ensure_default_model
from tests.unit.fake_vllm import FakeVllm, asgi_client, fake_worker


@pytest.fixture(autouse=True)
def root_logger_restored() -> Iterator[None]:
    """`llm_ops.cli.main` sets up the root logger on the stderr of the moment, pytest's capture of this
    test, which is closed when the test ends: a later test's server thread logging there would fail."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def vllm() -> FakeVllm:
    return FakeVllm()


@pytest.fixture
async def client(vllm: FakeVllm) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a worker (LLM Ops in vLLM's app) over `vllm`; API keys from the environment."""
    async with asgi_client(await fake_worker(vllm)) as client:
        yield client


@pytest.fixture(scope="session")
def default_tokenizer() -> object:
    """The packaged default model's own tokenizer (the model is converted once and cached)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ensure_default_model())
