"""Starting a worker process: resolve the model, open the engine, serve the app with uvicorn."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn

from llm_ops.engine import open_engine
from llm_ops.models.default import FOLDER_NAME, ensure_default_model
from llm_ops.prompts.build import ChatRenderer, ConvTemplateRenderer, TokenizerChatTemplateRenderer
from llm_ops.settings import DEFAULT_MODEL_NAME, WorkerSettings
from llm_ops.worker.app import create_worker_app
from llm_ops.worker.service import WorkerService

logger = logging.getLogger(__name__)


def resolve_model(settings: WorkerSettings) -> tuple[str, str, list[str]]:
    """(model path, dtype, served names): the packaged default model when no path is given."""
    if settings.model_path is None:
        path, dtype = str(ensure_default_model()), "float32" if settings.dtype == "auto" else settings.dtype
        default_names = [DEFAULT_MODEL_NAME]
    else:
        path, dtype = settings.model_path, settings.dtype
        default_names = [Path(settings.model_path.rstrip("/")).name or FOLDER_NAME]
    return path, dtype, settings.served_model_names or default_names


@contextlib.asynccontextmanager
async def open_worker_service(settings: WorkerSettings) -> AsyncIterator[WorkerService]:
    # Built before the engine loads, so that an unknown template name fails in seconds, not minutes.
    template = ConvTemplateRenderer(settings.conv_template) if settings.conv_template else None
    model_path, dtype, names = resolve_model(settings)
    engine_settings = settings.model_copy(update={"dtype": dtype})
    async with open_engine(engine_settings, model_path, names[0]) as engine:
        renderer: ChatRenderer = template or TokenizerChatTemplateRenderer(engine.tokenizer())
        logger.info("serving %s from %s", ", ".join(names), model_path)
        yield WorkerService(engine, names, renderer)


def run_worker(settings: WorkerSettings) -> None:
    app = create_worker_app(lambda: open_worker_service(settings))
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_keep_alive=settings.keep_alive_timeout,
        # With uvicorn's httptools parser, about one in three streams proxied by Traefik on a reused
        # connection, right after a long stream on another connection, was cut after its headers
        # (seen with benchmarks/stream_overhead.py; cause not found). h11 never showed it.
        http="h11",
    )
