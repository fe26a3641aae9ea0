"""LLM Ops inside vLLM's server: the `llm_ops` endpoint plugin (entry point group `vllm.endpoint_plugins`).

vLLM loads it when `VLLM_PLUGINS` names it (`llm_ops.worker.launch` does) and calls:

- `attach_router(app)` once its own routes are on the app: FastChat's routes (`worker.fastchat`), a
  `/health` that turns 503 while the worker drains, `/kv_events` (where its engine publishes its KV-cache
  events, for the routers), and the middlewares, outermost first: request
  ids, API keys, the public routes only, the body limit, admission on every generation route;
- `init_state(engine_client, state, args)` once its serving handlers exist: the engine client, the
  worker's names, chat template, conversation and admission (`WorkerState`).

While the app runs (its lifespan), the worker registers with the controller and sends heartbeats,
and SIGTERM starts a drain: /health says 503 for `--drain-seconds` so the front door routes new
requests elsewhere, then admission closes and vLLM's own shutdown lets answers in flight finish
(`--shutdown-timeout`) before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from argparse import Namespace
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from starlette.datastructures import State

from llm_ops.access import (
    GENERATION_ROUTES,
    KV_EVENTS_ROUTE,
    MESSAGES_ROUTE,
    RESET_PREFIX_CACHE,
    RESPONSES_ROUTE,
    WORKER_SERVICE_PATHS,
    LimitBody,
    PublicRoutes,
    RequireApiKey,
    api_keys_from_environment,
    refusal,
    service_headers,
    service_key_from_environment,
)
from llm_ops.controller.client import ControllerClient
from llm_ops.logs import RequestId
from llm_ops.prompts.chat_template import matching_conv_template, render_chat
from llm_ops.prompts.conversation import get_conv_template
from llm_ops.protocol.errors import ErrorCode, RequestError
from llm_ops.settings import ConfigurationError
from llm_ops.worker import vllm_api
from llm_ops.worker.admission import Admission, AdmitGeneration
from llm_ops.worker.fastchat import router
from llm_ops.worker.launch import KV_EVENTS_TOPIC, kv_events_replay_port, worker_options
from llm_ops.worker.registration import keep_registered
from llm_ops.worker.state import WorkerState, worker_state

logger = logging.getLogger(__name__)
# vLLM serves these for one kind of model only; a model of the other kind answers them in a sentence.
EMBEDDING_ROUTES = frozenset({"/v1/embeddings"})
TEXT_GENERATION_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", RESPONSES_ROUTE, MESSAGES_ROUTE})


class LLMOpsPlugin:
    name = "llm_ops"
    required_tasks = None  # every model: keys and public routes must guard an embedding model's server too

    def attach_router(self, app: FastAPI) -> None:
        options = worker_options(vllm_api.server_args(app))
        app.include_router(router)
        app.add_api_route("/health", health, methods=["GET"])
        app.add_api_route(KV_EVENTS_ROUTE, kv_events, methods=["GET"])
        app.add_api_route(RESET_PREFIX_CACHE, reset_prefix_cache, methods=["POST"])
        served = {getattr(route, "path", None) for route in app.routes}
        other_kinds = TEXT_GENERATION_ROUTES if served >= EMBEDDING_ROUTES else EMBEDDING_ROUTES
        for path in sorted(other_kinds - served):
            app.add_api_route(path, not_served, methods=["POST"])
        app.add_middleware(AdmitGeneration, paths=GENERATION_ROUTES, admission_of=_admission)
        app.add_middleware(LimitBody, max_bytes=options.max_body_bytes)
        app.add_middleware(PublicRoutes)
        app.add_middleware(
            RequireApiKey,
            keys=api_keys_from_environment(),
            service_key=service_key_from_environment(),
            service_paths=WORKER_SERVICE_PATHS,
        )
        app.add_middleware(RequestId)
        app.router.lifespan_context = _with_registration_and_drain(app.router.lifespan_context)

    async def init_state(self, engine_client: Any, state: State, args: Namespace) -> None:
        if engine_client is None:  # vLLM's render-only server: LLM Ops serves engines
            raise ConfigurationError("LLM Ops runs inside vLLM's API server, which has an engine")
        options, engine = worker_options(args), vllm_api.Engine(engine_client)
        tokenizer = engine.tokenizer()
        chat_template = vllm_api.load_chat_template(args.chat_template)
        generates = "generate" in await engine.supported_tasks()
        if generates and options.kind == "chat" and not (chat_template or getattr(tokenizer, "chat_template", None)):
            raise ConfigurationError(
                "this model has no chat template: start it with --conv-template NAME, "
                "or serve it as a completion model (start_completion.sh, --kind completion)"
            )
        template_name = options.conv_template or _matching_template(tokenizer, chat_template)
        conv = get_conv_template(template_name) if template_name else None
        explicit = conv if options.conv_template else None  # a matched template adds nothing the tokenizer lacks
        state.llm_ops = WorkerState(
            options=options,
            engine=engine,
            model_names=list(args.served_model_name),
            admission=Admission(
                options.limit_worker_concurrency or engine.max_num_seqs(),
                options.max_queued_requests,
                options.max_queue_wait,
            ),
            chat_template=chat_template,
            conv=jsonable_encoder(conv) if conv else None,
            stop=_stop_strings(explicit.stop_str) if explicit else [],
            stop_token_ids=list(explicit.stop_token_ids or []) if explicit else [],
        )
        logger.info("LLM Ops serves %s; FastChat conversation: %s", ", ".join(args.served_model_name), template_name)


def _admission(scope: Any) -> Admission:
    admission: Admission = scope["app"].state.llm_ops.admission
    return admission


def _matching_template(tokenizer: Any, chat_template: str | None) -> str | None:
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        return None

    def render(messages: list[dict[str, str]]) -> str:
        return render_chat(tokenizer, chat_template, messages)

    # A model's own template may write the BOS token that FastChat's templates leave to the tokenizer.
    bos = getattr(tokenizer, "bos_token", None) or ""
    return matching_conv_template(render) or matching_conv_template(lambda messages: render(messages).removeprefix(bos))


def _stop_strings(stop: str | list[str] | None) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


async def not_served(raw: Request) -> JSONResponse:
    """What vLLM answers with a bare 404 for a route of the other kind of model, said in a sentence."""
    state = worker_state(raw)
    embeds = vllm_api.embedding_handler(raw.app) is not None
    kind, asked = (
        ("an embedding model", "/v1/embeddings")
        if embeds
        else ("a text generation model", "/v1/chat/completions or /v1/completions")
    )
    message = f"{', '.join(state.model_names)} is {kind}: it does not answer {raw.url.path}; ask it {asked}"
    return refusal(raw.scope, RequestError(ErrorCode.VALIDATION_TYPE_ERROR, message))


async def reset_prefix_cache(raw: Request) -> JSONResponse:
    """Services only: the engine forgets its cached prefixes (409 while it runs requests, as vLLM refuses)."""
    if await worker_state(raw).engine.reset_prefix_cache():
        return JSONResponse({"reset": True})
    return JSONResponse({"reset": False, "detail": "the engine is running requests: try again once idle"}, 409)


async def health(raw: Request) -> JSONResponse:
    """200 while the worker should get requests; 503 (do not route here) when its engine failed or it
    drains. Says what it is doing, counted by admission and by the engine client."""
    state = worker_state(raw)
    counts = {
        "running": state.admission.running,
        "waiting": state.admission.waiting,
        "engine_requests": state.engine.unfinished_requests(),
    }
    try:
        await state.engine.check_health()
    except Exception as error:  # any failure of the check means: do not route here
        return JSONResponse({"status": "unhealthy", "detail": str(error)} | counts, status_code=503)
    if state.draining:
        return JSONResponse({"status": "draining"} | counts, status_code=503)
    return JSONResponse({"status": "ok"} | counts)


async def kv_events(raw: Request) -> JSONResponse:
    """Where this worker's engine publishes its KV-cache events (on every interface of the worker's host), or
    404 when it does not (no --kv-events-port)."""
    port = worker_state(raw).options.kv_events_port
    if port is None:
        message = "this worker publishes no KV-cache events (start it with --kv-events-port)"
        return refusal(raw.scope, RequestError(ErrorCode.VALIDATION_TYPE_ERROR, message, 404))
    return JSONResponse({"port": port, "replay_port": kv_events_replay_port(port), "topic": KV_EVENTS_TOPIC})


Lifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]


def _with_registration_and_drain(lifespan: Lifespan) -> Lifespan:
    @contextlib.asynccontextmanager
    async def run(app: Any) -> AsyncIterator[Any]:
        async with lifespan(app) as maybe_state:
            state: WorkerState = app.state.llm_ops
            registration = asyncio.create_task(_register(state, vllm_api.server_args(app)))
            loop = asyncio.get_running_loop()
            # Replaces vLLM's own SIGTERM handler (installed before the lifespan starts); SIGINT keeps it.
            loop.add_signal_handler(signal.SIGTERM, _start_draining, state, registration)
            engine_client_logger = logging.getLogger(vllm_api.ENGINE_CLIENT_LOGGER)
            engine_stopped = EngineStoppedAsAsked(state)
            engine_client_logger.addFilter(engine_stopped)
            try:
                yield maybe_state
            finally:
                registration.cancel()
                await asyncio.gather(registration, return_exceptions=True)
                engine_client_logger.removeFilter(engine_stopped)

    return run


class EngineStoppedAsAsked(logging.Filter):
    """vLLM's shutdown stops the engine before it cancels the task that reads the engine's outputs, and
    that task may see the engine gone first and log "AsyncLLM output_handler failed" with an
    EngineDeadError traceback, on a clean stop (vllm-project/vllm#48745). Once the worker was told to
    stop (SIGTERM), that end is the one asked for: it is logged as one INFO line, without a traceback."""

    def __init__(self, state: WorkerState) -> None:
        super().__init__()
        self.state = state

    def filter(self, record: logging.LogRecord) -> bool:
        if self.state.draining and record.exc_info and vllm_api.is_engine_dead(record.exc_info[1]):
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
            record.msg, record.args = "the engine stopped, as the stop signal asked", ()
            record.exc_info, record.exc_text = None, None
        return True


def _start_draining(state: WorkerState, registration: asyncio.Task[None]) -> None:
    if state.draining:
        return
    seconds = state.options.drain_seconds
    logger.info("SIGTERM: draining for %g s, then stopping", seconds)
    state.draining = True
    registration.cancel()  # no more heartbeats: the controller drops this worker

    def stop() -> None:
        state.admission.closed = True
        signal.raise_signal(signal.SIGINT)  # vLLM's shutdown: answers in flight finish, then the server stops

    asyncio.get_running_loop().call_later(seconds, stop)


async def _register(state: WorkerState, args: Namespace) -> None:
    options = state.options
    if options.controller_address is None:
        return
    address = options.worker_address or f"http://{args.host or '127.0.0.1'}:{args.port}/api"
    async with httpx.AsyncClient(timeout=5, headers=service_headers()) as http:
        controller = ControllerClient(http, options.controller_address)
        await keep_registered(controller, address, state.status, options.heart_beat_interval)
