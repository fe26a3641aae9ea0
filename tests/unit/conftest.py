from __future__ import annotations

import os

import pytest

from llm_ops.models.default import ensure_default_model


@pytest.fixture(scope="session")
def default_tokenizer() -> object:
    """The packaged default model's own tokenizer (the model is converted once and cached)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ensure_default_model())
