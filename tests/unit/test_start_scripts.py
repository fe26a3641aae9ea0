"""The containers' entry points fail fast, with a message a person understands, before any engine starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_ops.frontdoor.compose import START_SCRIPTS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
FAIL_FAST_SECONDS = 60  # generous for a loaded machine; an engine start would take minutes


def run_script(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return subprocess.run(
        ["bash", str(ROOT / script), *args],
        capture_output=True,
        text=True,
        timeout=FAIL_FAST_SECONDS,
        env=os.environ | {"PATH": path},
    )


@pytest.mark.parametrize("script", ["start_chat.sh", "start_completion.sh", "start_embedding.sh"])
def test_a_model_path_that_does_not_exist_is_refused_at_once(script: str) -> None:
    result = run_script(script, "--model=../root/.cache/huggingface/Llama-2-7b-chat", "--tensor-parallel-size=2")
    assert result.returncode == 1
    assert "--model ../root/.cache/huggingface/Llama-2-7b-chat: no such folder" in result.stderr


def test_a_folder_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    result = run_script("start_chat.sh", f"--model={tmp_path}")
    assert result.returncode == 1 and "has no config.json" in result.stderr


def test_a_hub_model_missing_from_the_cache_is_refused_when_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    result = run_script("start_completion.sh", "--model=mistralai/Mistral-7B-v0.1")
    assert result.returncode == 1 and "not in the Hugging Face cache" in result.stderr


def test_an_unregistered_conversation_template_is_refused_with_the_registered_ones() -> None:
    result = run_script("start_chat.sh", "--conv-template=llama2")
    assert result.returncode == 1
    assert "--conv-template llama2: not registered; registered: " in result.stderr and "llama-2" in result.stderr


def test_a_completion_model_needs_a_model() -> None:
    result = run_script("start_completion.sh")
    assert result.returncode == 1 and "a completion model needs --model" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model-pth=x"], "--model-pth=x"),
        (["--limit-worker-concurrency=lots"], "--limit-worker-concurrency"),
        (["--tensor-parallel-size=two"], "--tensor-parallel-size"),
    ],
)
def test_bad_arguments_are_refused_with_the_flag_named(args: list[str], message: str) -> None:
    result = run_script("start_chat.sh", *args)
    assert result.returncode != 0 and message in result.stderr


@pytest.mark.parametrize(("script", "kind"), START_SCRIPTS.items())
def test_each_script_starts_the_worker_kind_it_is_named_for(script: str, kind: str) -> None:
    assert f"exec llm-ops worker --kind={kind} --port=21002 " in (ROOT / script).read_text()
