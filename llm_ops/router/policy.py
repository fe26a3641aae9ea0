"""Which replica of a model gets a request: one decision per request, whichever API it came through.

A policy sees the request (its model, the worker's path, its body), the candidates (the model's
admitted replicas with room that this request has not tried yet, never empty) with their loads, and
the replicas already tried; it hears when a request starts on a replica and when it ends. Choosing
may await (policy `kv-events` asks a replica for the prompt's tokens); `follow` runs while the router
does, for a policy that keeps state of its own up to date in the background (it returns at once for the
others). One policy serves a deployment (`llm-ops router --routing-policy`, `llm_ops.router.app.POLICIES`);
the prefix-cache-aware ones are `llm_ops.router.prefix` (what the router sent) and
`llm_ops.router.kv_events` (what the workers' KV caches hold).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import aiohttp

from llm_ops.router.replicas import Replica, Replicas


@dataclass
class RoutedRequest:
    model: str
    path: str  # the worker's: /v1/chat/completions, /api/worker_generate_stream, ...
    body: bytes
    query: str = ""  # the client's query string, passed on (GET /v1/responses/{id}?stream=true)

    @cached_property
    def document(self) -> dict[str, Any]:
        """The JSON body (parsed on first use: routing by load never needs it)."""
        try:
            parsed = json.loads(self.body)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}


class Policy(Protocol):
    async def choose(
        self, request: RoutedRequest, candidates: Sequence[Replica], tried: Sequence[Replica]
    ) -> Replica: ...

    async def follow(self, replicas: Replicas, http: aiohttp.ClientSession) -> None: ...

    def cached_blocks(self, replica: Replica) -> int | None:
        """KV-cache blocks the policy knows `replica` holds (for `GET /replicas`); None: it does not know."""
        ...


@dataclass
class RoundRobin:
    """Each model's replicas in turn."""

    turns: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))

    async def choose(self, request: RoutedRequest, candidates: Sequence[Replica], tried: Sequence[Replica]) -> Replica:
        return self.next_in_turn(request.model, candidates)

    def next_in_turn(self, model: str, candidates: Sequence[Replica]) -> Replica:
        turn = self.turns[model]
        self.turns[model] = turn + 1
        return sorted(candidates, key=lambda replica: replica.url)[turn % len(candidates)]

    async def follow(self, replicas: Replicas, http: aiohttp.ClientSession) -> None:
        pass

    def cached_blocks(self, replica: Replica) -> int | None:
        return None


@dataclass
class LeastLoaded:
    """The replica with the smallest share of its running slots in use (this router's requests, exact, and
    the others' as last read), then the emptiest KV cache; ties in turn."""

    ties: RoundRobin = field(default_factory=RoundRobin)

    async def choose(self, request: RoutedRequest, candidates: Sequence[Replica], tried: Sequence[Replica]) -> Replica:
        return self.least_loaded(request.model, candidates)

    def least_loaded(self, model: str, candidates: Sequence[Replica]) -> Replica:
        loads = {replica: (share(replica), replica.load.kv_cache_usage) for replica in candidates}
        least = min(loads.values())
        return self.ties.next_in_turn(model, [replica for replica, load in loads.items() if load == least])

    async def follow(self, replicas: Replicas, http: aiohttp.ClientSession) -> None:
        pass

    def cached_blocks(self, replica: Replica) -> int | None:
        return None


def share(replica: Replica) -> float:
    return replica.busy / replica.load.capacity if replica.load.capacity else float(replica.busy)
