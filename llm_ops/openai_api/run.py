"""Starting the OpenAI-compatible API server."""

from __future__ import annotations

import uvicorn

from llm_ops.openai_api.app import create_openai_app
from llm_ops.settings import OpenAIApiSettings


def run_openai_api(settings: OpenAIApiSettings) -> None:
    app = create_openai_app(settings.controller_address)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, http="h11")
