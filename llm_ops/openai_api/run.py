"""Starting the OpenAI-compatible API server."""

from __future__ import annotations

from llm_ops.access import api_keys_from_environment
from llm_ops.openai_api.app import create_openai_app
from llm_ops.serving import serve
from llm_ops.settings import OpenAIApiSettings


def run_openai_api(settings: OpenAIApiSettings) -> None:
    app = create_openai_app(
        settings.controller_address,
        api_keys=api_keys_from_environment(),
        max_body_bytes=settings.max_body_bytes,
        policy=settings.routing_policy,
    )
    serve(app, settings.host, settings.port, settings.log_level, settings)
