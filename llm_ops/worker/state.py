"""What LLM Ops keeps in a worker's app state (`app.state.llm_ops`), beside vLLM's serving handlers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from llm_ops.protocol.worker import WorkerStatus
from llm_ops.settings import WorkerOptions
from llm_ops.worker.admission import Admission
from llm_ops.worker.vllm_api import Engine


@dataclass
class WorkerState:
    options: WorkerOptions
    engine: Engine  # vLLM's engine client, as the plugin's init_state got it
    model_names: list[str]
    admission: Admission
    chat_template: str | None  # what vLLM renders chats with; None: the tokenizer's own
    conv: dict[str, Any] | None  # the FastChat `Conversation` those chats render as, for FastChat clients
    stop: list[str] = field(default_factory=list)  # the conversation template's stop strings and token ids
    stop_token_ids: list[int] = field(default_factory=list)
    draining: bool = False  # after SIGTERM: /health says 503 and the front door routes elsewhere

    def status(self) -> WorkerStatus:
        """FastChat's queue length: requests running plus requests waiting for a slot."""
        return WorkerStatus(model_names=self.model_names, queue_length=self.admission.running + self.admission.waiting)


def worker_state(request: Request) -> WorkerState:
    state: WorkerState = request.app.state.llm_ops
    return state
