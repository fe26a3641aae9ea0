"""A router over a served controller and served replicas, for the unit tests of the router and of what
passes through it (keys, request ids, fuzzing)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI

from llm_ops.controller.app import create_controller_app
from llm_ops.controller.registry import WorkerRegistry
from llm_ops.protocol.worker import WorkerStatus
from llm_ops.router.app import create_router_app
from tests.conftest import free_port, wait_until_async
from tests.unit.fake_vllm import asgi_client
from tests.unit.served import Recorded, Served, served

PROBE_INTERVAL = 0.01  # seconds between the router's reads of the controller and the replicas
PROBED = {"/health", "/metrics", "/v1/models"}


class Router:
    """The router's client, and what stands behind it: the controller and the replicas, each served on a
    loopback port of its own and known here by a name; every request a replica gets is recorded."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        registry: WorkerRegistry,
        controller: Served,
        app: FastAPI,
        operator_headers: dict[str, str] | None = None,
    ) -> None:
        self.client, self.registry, self.app = client, registry, app
        self.operator_headers = operator_headers or {}  # what `replicas` sends: a key, when the router has keys
        self.servers: dict[str, Served] = {"controller": controller}
        self.names: dict[str, str] = {}  # URL -> name, of every replica added
        self.sent: list[tuple[str, str]] = []  # (replica's name, path) of every request, in order

    def to(self, name: str) -> list[str]:
        """The requests replica `name` got, but the router's health and load checks."""
        return [path for to, path in self.sent if to == name and path not in PROBED]

    def add(self, name: str, app: Any, models: tuple[str, ...] = ("fake-model",)) -> None:
        self.servers[name] = Served(Recorded(app, name, self.sent))
        self._register(name, self.servers[name].url, models)

    def add_dead(self, name: str, models: tuple[str, ...] = ("fake-model",)) -> None:
        """A replica registered where nothing listens: its connections are refused."""
        self._register(name, f"http://127.0.0.1:{free_port()}", models)

    def _register(self, name: str, url: str, models: tuple[str, ...]) -> None:
        self.names[url] = name
        self.registry.register(f"{url}/api", WorkerStatus(model_names=list(models), queue_length=0))

    def stop(self, name: str) -> None:
        self.servers.pop(name).stop()

    async def replicas(self) -> dict[str, dict[str, Any]]:
        listed = (await self.client.get("/replicas", headers=self.operator_headers)).json()["replicas"]
        return {self.names.get(replica["url"], replica["url"]): replica for replica in listed}

    async def admitted(self, *names: str) -> None:
        """Wait until the router has admitted exactly the replicas `names`."""

        async def seen() -> bool:
            return {name for name, replica in (await self.replicas()).items() if replica["admitted"]} == set(names)

        await wait_until_async(seen, 5, f"the router admits exactly {names}")


@contextlib.asynccontextmanager
async def serving_router(
    policy: str = "least-loaded",
    in_process: bool = False,
    controller_service_key: str | None = None,
    operator_headers: dict[str, str] | None = None,
    **options: Any,
) -> AsyncIterator[Router]:
    """A router served on a loopback port (or `in_process`, called through ASGI: answers come back only once
    they have ended), in front of a served controller that knows no replica yet. `options`: the router's."""
    registry = WorkerRegistry()
    with Served(create_controller_app(registry, service_key=controller_service_key)) as controller:
        api = create_router_app(controller.url, policy=policy, probe_interval=PROBE_INTERVAL, **options)
        async with contextlib.AsyncExitStack() as stack:
            if in_process:
                await stack.enter_async_context(api.router.lifespan_context(api))
                client = await stack.enter_async_context(asgi_client(api, "http://router"))
            else:
                url = stack.enter_context(served(api, lifespan=True))
                client = await stack.enter_async_context(httpx.AsyncClient(base_url=url))
            routed = Router(client, registry, controller, api, operator_headers)
            try:
                yield routed
            finally:
                for name in [name for name in routed.servers if name != "controller"]:
                    routed.stop(name)
