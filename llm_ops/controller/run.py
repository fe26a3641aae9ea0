"""Starting a controller process."""

from __future__ import annotations

import uvicorn

from llm_ops.controller.app import create_controller_app
from llm_ops.controller.registry import WorkerRegistry
from llm_ops.settings import ControllerSettings


def run_controller(settings: ControllerSettings) -> None:
    registry = WorkerRegistry(settings.dispatch_method, settings.heart_beat_expiration)
    uvicorn.run(create_controller_app(registry), host=settings.host, port=settings.port, log_level=settings.log_level)
