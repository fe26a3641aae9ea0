"""The `llm-ops` command. Each subcommand is a settings model whose fields are its flags, except
`llm-ops worker`, which is vLLM's server and takes vLLM's flags (`llm_ops.worker.launch`)."""

from __future__ import annotations

import os
import sys

import httpx
from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    CliApp,
    CliSubCommand,
    SettingsConfigDict,
)

from llm_ops.bench.settings import BenchSettings, RoutingBenchSettings
from llm_ops.logs import LogFormat, configure_logging, default_log_format
from llm_ops.models.default import ensure_default_model
from llm_ops.settings import (
    ENVIRONMENT_PREFIX,
    ConfigurationError,
    ControllerSettings,
    RouterSettings,
    StackSettings,
)

CLI_CONFIG = SettingsConfigDict(cli_kebab_case=True, cli_implicit_flags=True)


class ControllerCommand(ControllerSettings):
    """Run a controller: workers register with it, clients ask it which worker serves a model."""

    def cli_cmd(self) -> None:
        from llm_ops.controller.run import run_controller

        run_controller(self)


class RouterCommand(RouterSettings):
    """Run the router: every request to a model (/api/<model>/..., /v1/...), to a replica it picks."""

    def cli_cmd(self) -> None:
        from llm_ops.router.run import run_router

        run_router(self)


class UpCommand(StackSettings):
    """Start the native stack: a model service of docker-compose.yml with Traefik (HTTPS) in front."""

    def cli_cmd(self) -> None:
        from llm_ops.stack import run_stack

        sys.exit(run_stack(self))


class RoutingBenchCommand(RoutingBenchSettings):
    """Groups of users sharing long contexts, through each routing policy in turn on the running replicas
    (`LLM_OPS_SERVICE_KEY=... llm-ops up --replicas 2 --also-serve '[]'` first, with the same key)."""

    def cli_cmd(self) -> None:
        try:
            from llm_ops.bench.routing import run_routing_bench
        except ModuleNotFoundError as missing:
            raise _bench_extra_missing(missing) from None
        sys.exit(run_routing_bench(self))


class BenchCommand(BenchSettings):
    """Load the stack (FastChat a, /v1 d, /api/<model>/v1 e), the worker (b) and vLLM's own server (c) in turn;
    `llm-ops bench routing`: the routing policies against each other."""

    routing: CliSubCommand[RoutingBenchCommand]

    def cli_cmd(self) -> None:
        if self.routing is not None:
            CliApp.run_subcommand(self)
            return
        try:
            from llm_ops.bench.run import run_bench
        except ModuleNotFoundError as missing:
            raise _bench_extra_missing(missing) from None
        sys.exit(run_bench(self))


def _bench_extra_missing(missing: ModuleNotFoundError) -> ConfigurationError:
    # `make up` installs what the stack needs, not the load generator
    return ConfigurationError(f"llm-ops bench needs the bench extra ({missing.name} is missing): make install")


class PrepareModelCommand(BaseSettings):
    """Convert the packaged default model into a Hugging Face folder (done once, then cached)."""

    def cli_cmd(self) -> None:
        print(ensure_default_model())


class HealthCommand(BaseSettings):
    """Exit 0 if the worker answers its health check (the containers' HEALTHCHECK), else 1."""

    url: str = "http://127.0.0.1:21002/health"
    timeout: float = 5.0

    def cli_cmd(self) -> None:
        try:
            status = httpx.get(self.url, timeout=self.timeout).status_code
        except httpx.HTTPError as error:
            sys.exit(f"{self.url}: {error!r}")
        if status != 200:
            sys.exit(f"{self.url}: HTTP {status}")


class LLMOps(BaseSettings):
    """LLM Ops: LLMs behind one HTTPS front door."""

    model_config = CLI_CONFIG | SettingsConfigDict(
        env_prefix=ENVIRONMENT_PREFIX, env_nested_delimiter="__", cli_prog_name="llm-ops"
    )

    log_format: LogFormat = Field(
        default_factory=default_log_format,
        description="json: one JSON object per line, with request ids; text: aligned lines. Default: text on a "
        "terminal, json otherwise",
    )

    up: CliSubCommand[UpCommand]
    controller: CliSubCommand[ControllerCommand]
    router: CliSubCommand[RouterCommand]
    prepare_model: CliSubCommand[PrepareModelCommand]
    health: CliSubCommand[HealthCommand]
    bench: CliSubCommand[BenchCommand]

    def cli_cmd(self) -> None:
        configure_logging(self.log_format)
        CliApp.run_subcommand(self)


WORKER_COMMAND = "worker"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    configure_logging("text")  # until the settings say otherwise
    try:
        if args[:1] == [WORKER_COMMAND]:
            from llm_ops.worker.launch import run_worker

            # vLLM's parser owns the worker's command line: LLM_OPS_LOG_FORMAT is the way to choose.
            log_format = os.environ.get("LLM_OPS_LOG_FORMAT", default_log_format())
            configure_logging("text" if log_format == "text" else "json")
            run_worker(args[1:])
            return
        CliApp.run(LLMOps, cli_args=args)
    except ConfigurationError as error:
        sys.exit(f"llm-ops: {error}")
    except ValidationError as error:  # a flag's value out of its bounds
        sys.exit(f"llm-ops: invalid settings: {error}")
