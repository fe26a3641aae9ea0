"""Starting the router."""

from __future__ import annotations

from llm_ops.access import api_keys_from_environment, service_headers
from llm_ops.router.app import create_router_app
from llm_ops.serving import serve
from llm_ops.settings import RouterSettings


def run_router(settings: RouterSettings) -> None:
    app = create_router_app(
        settings.controller_address,
        api_keys=api_keys_from_environment(),
        service_headers=service_headers(),
        max_body_bytes=settings.max_body_bytes,
        policy=settings.routing_policy,
        probe_interval=settings.probe_interval,
    )
    serve(app, settings.host, settings.port, settings.log_level, settings)
