"""Starting a worker process: resolve the model, open the engine, serve the app with uvicorn."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from huggingface_hub import try_to_load_from_cache

from llm_ops.access import api_keys_from_environment
from llm_ops.controller.client import ControllerClient
from llm_ops.engine import open_engine
from llm_ops.models.default import FOLDER_NAME, ensure_default_model
from llm_ops.prompts.build import ChatRenderer, ConvTemplateRenderer, TokenizerChatTemplateRenderer
from llm_ops.prompts.conversation import conv_template_names
from llm_ops.serving import serve
from llm_ops.settings import DEFAULT_MODEL_NAME, ConfigurationError, WorkerSettings
from llm_ops.worker.admission import Admission
from llm_ops.worker.app import Background, create_worker_app, start_draining
from llm_ops.worker.registration import keep_registered
from llm_ops.worker.service import WorkerService

logger = logging.getLogger(__name__)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def served_names(settings: WorkerSettings) -> list[str]:
    """The names clients use: as configured, else the model folder's name."""
    if settings.served_model_names:
        return list(settings.served_model_names)
    if settings.model_path is None:
        return [DEFAULT_MODEL_NAME]
    return [Path(settings.model_path.rstrip("/")).name or FOLDER_NAME]


def check_before_start(settings: WorkerSettings) -> None:
    """Fail in a second, not after minutes of engine start, when the model or its template cannot be found."""
    if settings.conv_template is not None and settings.conv_template not in conv_template_names():
        known = ", ".join(conv_template_names())
        raise ConfigurationError(f"--conv-template {settings.conv_template}: not registered; registered: {known}")
    source = settings.model_path
    if source is None:
        if settings.kind == "completion":
            raise ConfigurationError("a completion model needs --model-path (a model folder or a Hugging Face id)")
        return
    folder = Path(source).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ConfigurationError(f"--model-path {source}: the folder has no config.json, it is not a model")
        return
    if source.startswith(("/", ".", "~")) or not HUB_ID.fullmatch(source):
        raise ConfigurationError(f"--model-path {source}: no such folder (and not a Hugging Face id like org/name)")
    if os.environ.get("HF_HUB_OFFLINE") == "1" and try_to_load_from_cache(source, "config.json") is None:
        raise ConfigurationError(f"--model-path {source}: not in the Hugging Face cache, and HF_HUB_OFFLINE=1")


def resolve_model(settings: WorkerSettings) -> tuple[str, str]:
    """(model path, dtype): the packaged default model, converted once, when no path is given."""
    if settings.model_path is None:
        return str(ensure_default_model()), "float32" if settings.dtype == "auto" else settings.dtype
    return settings.model_path, settings.dtype


def chat_renderer(settings: WorkerSettings, template: ChatRenderer | None, tokenizer: Any) -> ChatRenderer:
    """The named conversation template, else the tokenizer's chat template; a chat model must have one."""
    if template is not None:
        return template
    if settings.kind == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ConfigurationError(
            "this model has no chat template: start it with --conv-template NAME, "
            "or serve it as a completion model (start_completion.sh, --kind completion)"
        )
    return TokenizerChatTemplateRenderer(tokenizer)


@contextlib.asynccontextmanager
async def open_worker_service(settings: WorkerSettings) -> AsyncIterator[WorkerService]:
    # Built before the engine loads, so that an unknown template name fails in seconds, not minutes.
    template = ConvTemplateRenderer(settings.conv_template) if settings.conv_template else None
    model_path, dtype = resolve_model(settings)
    names = served_names(settings)
    engine_settings = settings.model_copy(update={"dtype": dtype})
    async with open_engine(engine_settings, model_path, names[0]) as engine:
        renderer = chat_renderer(settings, template, engine.tokenizer())
        logger.info("serving %s from %s", ", ".join(names), model_path)
        admission = Admission(settings.limit_worker_concurrency, settings.max_queued_requests, settings.max_queue_wait)
        yield WorkerService(engine, names, renderer, admission)


def registration(settings: WorkerSettings) -> Background | None:
    """Registering with the controller and sending heartbeats, when there is a controller."""
    controller_address = settings.controller_address
    if controller_address is None:
        return None

    async def register(service: WorkerService) -> None:
        async with httpx.AsyncClient(timeout=5) as http:
            controller = ControllerClient(http, controller_address)
            await keep_registered(controller, settings.address(), service.status, settings.heart_beat_interval)

    return register


def run_worker(settings: WorkerSettings) -> None:
    check_before_start(settings)
    open_service = lambda: open_worker_service(settings)  # noqa: E731
    app = create_worker_app(open_service, registration(settings), api_keys_from_environment(), settings.max_body_bytes)
    serve(
        app,
        settings.host,
        settings.port,
        settings.log_level,
        settings,
        on_drain=lambda: start_draining(app),
        timeout_keep_alive=settings.keep_alive_timeout,
    )
