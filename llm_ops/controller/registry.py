"""The controller's state: registered workers, their queues, and which one gets the next request.

Semantics follow `fastchat.serve.controller`: a worker is known by its address; heartbeats carry its
queue length; a worker that misses heartbeats for `expiration` seconds is dropped; dispatch is by
shortest queue (queue length over speed, counting each dispatch) or by lottery weighted by speed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from llm_ops.protocol.worker import WorkerStatus

DispatchMethod = Literal["shortest_queue", "lottery"]


@dataclass
class WorkerInfo:
    model_names: list[str]
    speed: int
    queue_length: int
    check_heart_beat: bool
    last_heart_beat: float
    multimodal: bool = False


@dataclass
class WorkerRegistry:
    dispatch_method: DispatchMethod = "shortest_queue"
    expiration: float = 30.0
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    workers: dict[str, WorkerInfo] = field(default_factory=dict)

    def register(
        self, name: str, status: WorkerStatus, check_heart_beat: bool = True, multimodal: bool = False
    ) -> None:
        self.workers[name] = WorkerInfo(
            status.model_names, status.speed, status.queue_length, check_heart_beat, self.clock(), multimodal
        )

    def heartbeat(self, name: str, queue_length: int) -> bool:
        """False for a worker the registry does not know: it must register again."""
        info = self.workers.get(name)
        if info is None:
            return False
        info.queue_length = queue_length
        info.last_heart_beat = self.clock()
        return True

    def remove(self, name: str) -> None:
        self.workers.pop(name, None)

    def remove_expired(self) -> list[str]:
        deadline = self.clock() - self.expiration
        expired = [n for n, info in self.workers.items() if info.check_heart_beat and info.last_heart_beat < deadline]
        for name in expired:
            self.remove(name)
        return expired

    def models(self, multimodal: bool | None = None) -> list[str]:
        chosen = (info for info in self.workers.values() if multimodal is None or info.multimodal == multimodal)
        return sorted({name for info in chosen for name in info.model_names})

    def address_for(self, model: str) -> str | None:
        """The worker to send the next request for `model` to, or None if no worker serves it."""
        candidates = [(name, info) for name, info in self.workers.items() if model in info.model_names]
        if not candidates:
            return None
        if self.dispatch_method == "lottery":
            weights = [max(info.speed, 0) for _, info in candidates]
            return self.rng.choices(candidates, weights=weights)[0][0] if any(weights) else None
        name, info = min(candidates, key=lambda candidate: candidate[1].queue_length / max(candidate[1].speed, 1))
        info.queue_length += 1  # until the next heartbeat says otherwise, it has one more
        return name
