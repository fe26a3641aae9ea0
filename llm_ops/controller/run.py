"""Starting a controller process."""

from __future__ import annotations

from llm_ops.access import api_keys_from_environment, authorization_headers
from llm_ops.controller.app import create_controller_app
from llm_ops.controller.registry import WorkerRegistry
from llm_ops.serving import serve
from llm_ops.settings import ControllerSettings


def run_controller(settings: ControllerSettings) -> None:
    registry = WorkerRegistry(settings.dispatch_method, settings.heart_beat_expiration)
    app = create_controller_app(registry, worker_headers=authorization_headers(api_keys_from_environment()))
    serve(app, settings.host, settings.port, settings.log_level, settings)
