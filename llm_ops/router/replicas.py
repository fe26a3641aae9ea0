"""The replicas the router knows, and what it knows of each: models, health, load.

A replica is one worker (one vLLM engine). The router learns them from the controller and keeps each
one's state itself (`llm_ops.router.watch`):

- `in_flight`: this router's generation requests on it, exact (+1 when sent, -1 when the answer ends
  or breaks);
- `load`: what the worker's /metrics said at the last read (every `probe_interval`): its admission's
  running and waiting requests (every router's, and clients calling it directly), its running slots
  (`capacity`) and vLLM's KV-cache usage;
- `admitted`: it passed a health check and has not failed since. A replica that refuses a connection,
  answers 503 or breaks mid-answer is set aside at once (one that answers its checks late, after a few in
  a row), and admitted again after a passing check.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class Load:
    running: int = 0
    waiting: int = 0
    capacity: int | None = None  # running slots; None: unknown, the worker's admission decides alone
    kv_cache_usage: float = 0.0  # 0..1
    in_flight_when_read: int = 0  # this router's in-flight requests when the worker counted `running + waiting`


@dataclass(eq=False)
class Replica:
    url: str  # http://host:port: vLLM's routes; FastChat's are under /api
    models: frozenset[str]
    in_flight: int = 0
    load: Load = field(default_factory=Load)
    admitted: bool = False
    model_cards: list[dict[str, Any]] = field(default_factory=list)  # its /v1/models, read when admitted
    slow_probes: int = 0  # health checks in a row it did not answer in time
    times_set_aside: int = 0  # a health check begun before the last time passes and still does not admit it

    @property
    def busy(self) -> int:
        """Requests on it: this router's, exact, and the others' as last read."""
        others = self.load.running + self.load.waiting - self.load.in_flight_when_read
        return self.in_flight + max(0, others)

    @property
    def has_room(self) -> bool:
        return self.load.capacity is None or self.busy < self.load.capacity

    def set_aside(self, reason: str) -> None:
        if self.admitted:
            logger.warning("replica %s set aside: %s", self.url, reason)
        self.admitted = False
        self.times_set_aside += 1

    def admit(self, model_cards: list[dict[str, Any]]) -> None:
        logger.info("replica %s admitted, serving %s", self.url, ", ".join(sorted(self.models)))
        self.model_cards = model_cards
        self.admitted = True


@dataclass
class Replicas:
    by_url: dict[str, Replica] = field(default_factory=dict)
    listed: bool = False  # the controller has answered at least once

    def update(self, listed: Mapping[str, Iterable[str]]) -> None:
        """The controller's workers now: `listed` maps each one's URL to its models. New ones start set
        aside (until their first health check); gone ones are forgotten (their answers in flight go on)."""
        self.listed = True
        for url in self.by_url.keys() - listed.keys():
            logger.info("replica %s left the controller's list", url)
            del self.by_url[url]
        for url, models in listed.items():
            known = self.by_url.get(url)
            if known is None or known.models != frozenset(models):
                self.by_url[url] = Replica(url, frozenset(models))

    def of_model(self, model: str) -> list[Replica]:
        return [replica for replica in self.by_url.values() if model in replica.models]

    def __iter__(self) -> Iterator[Replica]:
        return iter(list(self.by_url.values()))
