"""The `llm-ops` command. Each subcommand is a settings model whose fields are its flags."""

from __future__ import annotations

import logging
import sys

from pydantic_settings import BaseSettings, CliApp, CliSubCommand, SettingsConfigDict

from llm_ops.models.default import ensure_default_model
from llm_ops.settings import StackSettings, WorkerSettings


class WorkerCommand(WorkerSettings):
    """Run one FastChat-protocol worker wrapping a vLLM engine."""

    def cli_cmd(self) -> None:
        from llm_ops.worker.run import run_worker

        run_worker(self)


class UpCommand(StackSettings):
    """Start the native stack: Traefik (HTTPS) in front of a worker with the default model."""

    def cli_cmd(self) -> None:
        from llm_ops.stack import run_stack

        sys.exit(run_stack(self))


class PrepareModelCommand(BaseSettings):
    """Convert the packaged default model into a Hugging Face folder (done once, then cached)."""

    def cli_cmd(self) -> None:
        print(ensure_default_model())


class LLMOps(BaseSettings):
    """LLM Ops: LLMs behind one HTTPS front door."""

    model_config = SettingsConfigDict(
        env_prefix="LLM_OPS_",
        env_nested_delimiter="__",
        cli_prog_name="llm-ops",
        cli_kebab_case=True,
        cli_implicit_flags=True,
    )

    up: CliSubCommand[UpCommand]
    worker: CliSubCommand[WorkerCommand]
    prepare_model: CliSubCommand[PrepareModelCommand]

    def cli_cmd(self) -> None:
        CliApp.run_subcommand(self)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    CliApp.run(LLMOps, cli_args=sys.argv[1:] if argv is None else argv)
