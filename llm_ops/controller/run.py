"""Starting a controller process."""

from __future__ import annotations

from llm_ops.access import service_headers, service_key_from_environment
from llm_ops.controller.app import create_controller_app
from llm_ops.controller.registry import WorkerRegistry
from llm_ops.serving import serve
from llm_ops.settings import ControllerSettings


def run_controller(settings: ControllerSettings) -> None:
    registry = WorkerRegistry(settings.dispatch_method, settings.heart_beat_expiration)
    app = create_controller_app(registry, worker_headers=service_headers(), service_key=service_key_from_environment())
    serve(app, settings.host, settings.port, settings.log_level, settings)
