"""The command line (llm_ops/cli.py): its commands, and `llm-ops worker`, which is vLLM's parser."""

from __future__ import annotations

import pytest
from pydantic_settings import CliApp

from llm_ops.cli import LLMOps, main


def test_the_cli_has_the_up_and_prepare_model_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        CliApp.run(LLMOps, cli_args=["--help"])
    out = capsys.readouterr().out
    assert "up" in out and "prepare-model" in out  # `worker` is vLLM's parser's: see test_launch


def test_llm_ops_worker_help_is_vllms_parser_with_llm_ops_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["worker", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "--max-model-len" in out and "--limit-worker-concurrency" in out and "--conv-template" in out
