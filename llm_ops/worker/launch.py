"""`llm-ops worker`: vLLM's own OpenAI-compatible server, with LLM Ops inside it as an endpoint plugin.

The command line is vLLM's (`vllm serve` flags, parsed by vLLM's own parser) plus LLM Ops' group
(`WorkerOptions`: conversation template, controller, admission). Before vLLM starts, the launcher
fills in what a deployment of LLM Ops means by default:

- no `--model`: the packaged SmolLM2-135M-Instruct, converted once, in float32 (`--kind embedding`: the packaged
  all-MiniLM-L6-v2, unzipped once, in float32);
- `--kind embedding`: vLLM's pooling runner (`--runner pooling`);
- no `--served-model-name`: the model folder's last name (it goes into URLs: /api/<name>/);
- `--conv-template NAME`: the template as a Jinja chat template, so /v1 chats render as FastChat's;
- `VLLM_PLUGINS` names the `llm_ops` plugin (`llm_ops.worker.plugin`), which adds FastChat's routes,
  admission, API keys and registration to vLLM's app;
- a drain on SIGTERM (`--shutdown-timeout`), and idle connections kept longer than Traefik's;
- `--kv-events-port PORT`: vLLM's KV-cache events on PORT (replay on PORT + 1), for `--routing-policy kv-events`;
- `--claim-engine-cores DIR`: cores of its own for the engine on a CPU host (`llm_ops.worker.cores`), claimed
  before vLLM reads its environment and held while the worker runs;
- a stop signal that stops the worker while its engine is still starting (`serve`).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import types
import typing
from argparse import Namespace
from pathlib import Path
from typing import Any

from huggingface_hub import try_to_load_from_cache

from llm_ops.logs import POLLED_PATHS
from llm_ops.serving import KEEP_ALIVE_SECONDS
from llm_ops.settings import (
    DEFAULT_EMBEDDING_MODEL_NAME,
    DEFAULT_MODEL_NAME,
    ENVIRONMENT_PREFIX,
    MODEL_NAME_PATTERN,
    ConfigurationError,
    WorkerOptions,
)
from llm_ops.worker import vllm_api
from llm_ops.worker.cores import engine_cores_environment

logger = logging.getLogger(__name__)

PLUGIN_NAME = "llm_ops"  # the entry point in pyproject.toml's vllm.endpoint_plugins group
CONTAINER_PORT = 21002  # where the start scripts (start_chat.sh, ...) have the worker listen
SHUTDOWN_TIMEOUT = 30  # seconds vLLM lets answers in flight finish after SIGTERM, unless told otherwise
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
SAFE_NAME = re.compile(MODEL_NAME_PATTERN)
KV_EVENTS_TOPIC = "kv"


def worker_parser() -> Any:
    """vLLM's server parser with LLM Ops' flags in a group of their own, each also read from the environment
    (`ENVIRONMENT_PREFIX` and its name in capitals: compose sets it for every replica of a service)."""
    parser = vllm_api.server_parser("llm-ops worker", "vLLM's OpenAI-compatible server with LLM Ops.")
    group = parser.add_argument_group(
        "LLM Ops",
        "FastChat's worker protocol, admission, registration, engine cores; each flag can also be set in the "
        f"environment: {ENVIRONMENT_PREFIX}CLAIM_ENGINE_CORES=DIR for --claim-engine-cores DIR",
    )
    for name, field in WorkerOptions.model_fields.items():
        kind = _argument_type(field.annotation)
        choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal else None
        group.add_argument(
            "--" + name.replace("_", "-"), dest=name, type=kind, choices=choices,
            default=os.environ.get(ENVIRONMENT_PREFIX + name.upper(), field.default), help=field.description,
        )  # fmt: skip
    parser.set_defaults(model=None)  # tells "not given" apart from vLLM's own default model
    return parser


def _argument_type(annotation: Any) -> type:
    if typing.get_origin(annotation) is typing.Literal:
        return str
    members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return _argument_type(members[0])
    return annotation if isinstance(annotation, type) else str


def parse_worker_args(argv: list[str]) -> Namespace:
    """The worker's flags, as `llm-ops worker` reads them, without preparing anything."""
    args: Namespace = worker_parser().parse_args(argv)
    if args.model is None:
        args.model = args.model_tag
    return args


def worker_options(args: Namespace) -> WorkerOptions:
    """LLM Ops' flags; their defaults where vLLM's own parser read the command line (`vllm serve` with
    VLLM_PLUGINS=llm_ops loads the plugin without them)."""
    given = {name: getattr(args, name) for name in WorkerOptions.model_fields if hasattr(args, name)}
    return WorkerOptions.model_validate(given)


def served_names(args: Namespace) -> list[str]:
    """The names clients use: as configured, else the model folder's name."""
    if args.served_model_name:
        names = list(args.served_model_name)
    elif args.model is None:
        names = [DEFAULT_EMBEDDING_MODEL_NAME if getattr(args, "kind", None) == "embedding" else DEFAULT_MODEL_NAME]
    else:
        names = [Path(str(args.model).rstrip("/")).name]
    unsafe = [name for name in names if not SAFE_NAME.fullmatch(name)]
    if unsafe:
        raise ConfigurationError(
            f"served model name {unsafe[0]!r}: use letters, digits, '.', '_' and '-' (it goes into /api/<name>/); "
            f"set --served-model-name"
        )
    return names


def check_before_start(args: Namespace, options: WorkerOptions) -> None:
    """Fail in a second, not after minutes of engine start, when the model or its template cannot be found."""
    from llm_ops.prompts.conversation import conv_template_names

    if options.conv_template is not None and options.conv_template not in conv_template_names():
        known = ", ".join(conv_template_names())
        raise ConfigurationError(f"--conv-template {options.conv_template}: not registered; registered: {known}")
    source = args.model
    if source is None:
        if options.kind == "completion":
            raise ConfigurationError("a completion model needs --model (a model folder or a Hugging Face id)")
        return
    folder = Path(source).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ConfigurationError(f"--model {source}: the folder has no config.json, it is not a model")
        return
    if source.startswith(("/", ".", "~")) or not HUB_ID.fullmatch(source):
        raise ConfigurationError(f"--model {source}: no such folder (and not a Hugging Face id like org/name)")
    if os.environ.get("HF_HUB_OFFLINE") == "1" and try_to_load_from_cache(source, "config.json") is None:
        raise ConfigurationError(f"--model {source}: not in the Hugging Face cache, and HF_HUB_OFFLINE=1")


def resolve_defaults(args: Namespace, options: WorkerOptions) -> Namespace:
    """Fill in LLM Ops' defaults (model, dtype, names, chat template, drain, quiet polls); `args` as vLLM's server
    takes them."""
    from llm_ops.models.default import ensure_default_model
    from llm_ops.models.embedding import ensure_embedding_model
    from llm_ops.prompts.chat_template import jinja_chat_template
    from llm_ops.prompts.conversation import get_conv_template

    args.served_model_name = served_names(args)
    embeds = options.kind == "embedding"
    if embeds:
        args.runner = "pooling"
    if args.model is None:
        args.model = str(ensure_embedding_model() if embeds else ensure_default_model())
        # bfloat16 garbles the chat model; half precision makes the embedding model 4x slower on a CPU
        args.dtype = "float32" if args.dtype == "auto" else args.dtype
    if options.conv_template is not None:
        if args.chat_template is not None:
            raise ConfigurationError("give either --conv-template or --chat-template, not both")
        conv = get_conv_template(options.conv_template)
        args.chat_template = jinja_chat_template(conv, bos=tokenizer_adds_bos(args.tokenizer or args.model, args))
    if options.kv_events_port is not None:
        if args.kv_events_config is not None:
            raise ConfigurationError("give either --kv-events-port or --kv-events-config, not both")
        args.kv_events_config = vllm_api.kv_events_config(
            options.kv_events_port, kv_events_replay_port(options.kv_events_port), KV_EVENTS_TOPIC
        )
    if args.shutdown_timeout == 0:
        args.shutdown_timeout = SHUTDOWN_TIMEOUT
    if args.disable_access_log_for_endpoints is None:  # polled every few seconds: their lines say nothing
        args.disable_access_log_for_endpoints = ",".join(sorted(POLLED_PATHS))
    return args


def kv_events_replay_port(port: int) -> int:
    return port + 1


def tokenizer_adds_bos(tokenizer_source: str, args: Namespace) -> bool:
    """Whether the model's tokenizer starts a plain prompt with its BOS token (vLLM's chat rendering does not
    add it: a FastChat template, which leaves it to the tokenizer, must then write it)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        tokenizer_source, revision=args.tokenizer_revision, trust_remote_code=args.trust_remote_code
    )
    ids = tokenizer("x").input_ids
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def server_environment(options: WorkerOptions, environ: dict[str, str]) -> dict[str, str]:
    """The environment vLLM's server runs in: the plugin enabled, keep-alive and KV cache set, stored responses
    on (unless `environ` says otherwise)."""
    plugins = [name for name in environ.get(vllm_api.PLUGINS_VARIABLE, "").split(",") if name]
    keep_alive, kv_cache_space = vllm_api.KEEP_ALIVE_VARIABLE, vllm_api.KV_CACHE_SPACE_VARIABLE
    store = vllm_api.RESPONSES_STORE_VARIABLE
    return environ | {
        vllm_api.PLUGINS_VARIABLE: ",".join(dict.fromkeys([*plugins, PLUGIN_NAME])),
        keep_alive: environ.get(keep_alive, str(KEEP_ALIVE_SECONDS)),
        # Without this the CPU build reserves most of the machine's memory for its KV cache.
        kv_cache_space: environ.get(kv_cache_space, str(options.kv_cache_space_gib)),
        # The Responses API's `previous_response_id` and GET /v1/responses/{id} need the response stored; the
        # router sends them to the replica that stored it (llm_ops.router.stored). See docs/operations.md.
        store: environ.get(store, "1"),
        # vLLM's SageMaker routes import a package that sets the root logger and its handlers to this level
        # (ERROR unless set): LLM Ops' own INFO lines (one per FastChat request, registration) would vanish.
        "SAGEMAKER_CONTAINER_LOG_LEVEL": environ.get("SAGEMAKER_CONTAINER_LOG_LEVEL", "INFO"),
    }


def vllm_argv(argv: list[str]) -> list[str]:
    """`argv` for vLLM's own server, without LLM Ops: LLM Ops' flags left out, its defaults written out.
    The benchmark's reference server serves the same model the same way with these."""
    args = parse_worker_args(argv)
    resolve_defaults(args, worker_options(args))
    ours = {"--" + name.replace("_", "-") for name in WorkerOptions.model_fields}
    kept: list[str] = []
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
        elif arg.split("=", 1)[0] in ours:
            skip_value = "=" not in arg
        else:
            kept.append(arg)
    resolved = ["--model", args.model, "--dtype", args.dtype, "--runner", args.runner]
    resolved += ["--served-model-name", *args.served_model_name]
    template = ["--chat-template", args.chat_template] if args.chat_template else []
    return [*kept, *resolved, *template, "--shutdown-timeout", str(args.shutdown_timeout)]


def run_worker(argv: list[str]) -> None:
    """vLLM's server entry point, with LLM Ops' flags, defaults and checks; a vLLM that lacks a name LLM Ops
    uses is refused first."""
    import uvloop

    vllm_api.check_vllm_surface()
    vllm_api.prepare_process()
    args = parse_worker_args(argv)
    options = worker_options(args)
    check_before_start(args, options)
    resolve_defaults(args, options)
    with engine_cores_environment(options, dict(os.environ)) as environment:
        os.environ.update(server_environment(options, environment))
        vllm_api.configure_logging(args)
        vllm_api.validate_serve_args(args)
        uvloop.run(serve(args))


async def serve(args: Namespace) -> None:
    """vLLM's `run_server`, but a stop signal before the server serves stops the worker (`_stop_while_starting`).
    Once it serves, vLLM's own handlers and the plugin's drain take over both signals."""
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _stop_while_starting)
    await vllm_api.run_server(args)


def _stop_while_starting(signum: int, _: object) -> None:
    """vLLM's `run_server` turns SIGTERM into KeyboardInterrupt until it serves, but while the server waits for
    the engine to start, vLLM's ZeroMQ socket context (`zmq_socket_ctx`) swallows KeyboardInterrupt: the worker
    would go on starting and then serve as if no stop had come, and `docker stop` would wait out its grace
    period. SystemExit is not swallowed; the engine's processes are shut down as it unwinds."""
    logger.info("%s while the worker was starting: stopping", signal.Signals(signum).name)
    raise SystemExit(0)
