"""The router: every request that reaches a model, FastChat's and OpenAI's alike, to a replica it picks.

Routes (Traefik terminates TLS and applies keys and rate limits in front):
- `/api/<model>/<FastChat route>` (`worker_generate_stream`, ...) to a replica's `/api/<route>`;
- `/api/<model>/v1/...`, `/api/<model>/tokenize`, `/api/<model>/detokenize` to a replica's `/v1/...`, ...;
- `/v1/...`, `/tokenize`, `/detokenize` to a replica of the model the body names;
- `GET /v1/responses/{id}`, `POST /v1/responses/{id}/cancel`, and a new response's `previous_response_id`:
  to the replica holding that stored response, which its id names (`llm_ops.router.stored`);
- `GET /v1/models`: the model cards of every admitted replica, from the router's own state;
- `GET /replicas`: what the router knows of each replica (not routed by Traefik: for operators and tests);
- `GET /`: the playground (`llm_ops.playground`), a page that talks to /v1 from a browser.

The replicas come from the controller, their health and load from the replicas themselves, in the
background (`llm_ops.router.watch`); which replica answers is the policy's choice (`llm_ops.router.policy`)
and `llm_ops.router.forward` relays its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from llm_ops.access import MODEL_OPENAI_ROUTES, PROBES, LimitBody, RequireApiKey, refusal
from llm_ops.logs import RequestId
from llm_ops.playground import STATIC_DIR, URL_PREFIX
from llm_ops.protocol.errors import ErrorCode, RequestError
from llm_ops.router.forward import Router
from llm_ops.router.kv_events import KvEvents
from llm_ops.router.policy import LeastLoaded, Policy, RoundRobin, RoutedRequest
from llm_ops.router.prefix import Prefix
from llm_ops.router.replicas import Replicas
from llm_ops.router.watch import watch_replicas
from llm_ops.serving import health
from llm_ops.settings import MAX_BODY_BYTES

# Answers can take minutes: no limit but to connect. No pool limit: the router's own count of each replica's
# running slots bounds the connections to it, and a pool limit would be a queue nobody sees. Idle connections
# close before the workers' own keep-alive ends (75 s).
WORKER_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=2.0)
POOL_LIMIT, IDLE_CONNECTION_SECONDS = 0, 30
POLICIES: dict[str, type[Policy]] = {
    "least-loaded": LeastLoaded,
    "round-robin": RoundRobin,
    "prefix": Prefix,
    "kv-events": KvEvents,
}


def router_of(request: Request) -> Router:
    router: Router = request.app.state.router
    return router


async def by_body(request: Request) -> Response:
    """`/v1/...`, `/tokenize`, `/detokenize`: the model is the body's."""
    body = await request.body()
    routed = RoutedRequest(model_of(body), request.url.path, body)
    return await router_of(request).forward(routed, request.method, dict(request.headers), request.receive)


async def by_path(request: Request) -> Response:
    """`/api/<model>/<route>`: the model is the path's."""
    model, route = request.path_params["model"], request.path_params["route"]
    path = f"/{route}" if route.startswith(MODEL_OPENAI_ROUTES) else f"/api/{route}"
    routed = RoutedRequest(model, path, await request.body(), request.url.query)
    return await router_of(request).forward(routed, request.method, dict(request.headers), request.receive)


async def by_response_id(request: Request) -> Response:
    """`GET /v1/responses/{id}`, `POST /v1/responses/{id}/cancel`: no model, the id names the replica."""
    routed = RoutedRequest("", request.url.path, await request.body(), request.url.query)
    return await router_of(request).forward(routed, request.method, dict(request.headers), request.receive)


def model_of(body: bytes) -> str:
    """The `model` a JSON body names; `RequestError` (400) for a body that names none."""
    try:
        document = json.loads(body)
    except ValueError as error:
        raise RequestError(ErrorCode.VALIDATION_TYPE_ERROR, f"the request body is not valid JSON: {error}") from None
    model = document.get("model") if isinstance(document, dict) else None
    if not isinstance(model, str) or not model:
        raise RequestError(ErrorCode.VALIDATION_TYPE_ERROR, "the request body must name a `model`", param="model")
    return model


async def list_models(request: Request) -> JSONResponse:
    """vLLM's model card of every served model, from one of its admitted replicas."""
    cards = {
        card["id"]: card for replica in router_of(request).replicas if replica.admitted for card in replica.model_cards
    }
    return JSONResponse({"object": "list", "data": [cards[name] for name in sorted(cards)]})


async def list_replicas(request: Request) -> JSONResponse:
    router = router_of(request)
    replicas = router.replicas
    return JSONResponse(
        {
            "replicas": [
                {
                    "url": replica.url,
                    "models": sorted(replica.models),
                    "admitted": replica.admitted,
                    "in_flight": replica.in_flight,
                    "running": replica.load.running,
                    "waiting": replica.load.waiting,
                    "capacity": replica.load.capacity,
                    "kv_cache_usage": replica.load.kv_cache_usage,
                    "cached_blocks": router.policy.cached_blocks(replica),
                }
                for replica in replicas
            ]
        }
    )


async def playground_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")


async def _request_error(request: Request, error: Exception) -> Response:
    if not isinstance(error, RequestError):
        raise error
    return refusal(request.scope, error)


async def _http_error(request: Request, error: Exception) -> Response:
    if not isinstance(error, HTTPException):
        raise error
    message = f"no such endpoint: {request.method} {request.url.path}" if error.status_code == 404 else error.detail
    code = ErrorCode.VALIDATION_TYPE_ERROR if error.status_code < 500 else ErrorCode.INTERNAL_ERROR
    return refusal(request.scope, RequestError(code, str(message), error.status_code))


def create_router_app(
    controller_address: str,
    api_keys: frozenset[str] = frozenset(),
    service_headers: dict[str, str] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    policy: str = "prefix",
    probe_interval: float = 0.5,
) -> FastAPI:
    """`api_keys`: when given, every route but the probes and the playground's files needs one.
    `service_headers`: what requests to the controller and the workers carry (`llm_ops.access.service_headers`)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=POOL_LIMIT, keepalive_timeout=IDLE_CONNECTION_SECONDS)
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=WORKER_TIMEOUT,
            headers=service_headers,
            auto_decompress=False,  # bytes in, bytes out
            skip_auto_headers=("Accept-Encoding",),  # so that the workers send them as they are
        ) as http:
            router = app.state.router = Router(http, Replicas(), POLICIES[policy]())
            background = [
                asyncio.create_task(
                    watch_replicas(router.replicas, http, controller_address.rstrip("/"), probe_interval)
                ),
                asyncio.create_task(router.policy.follow(router.replicas, http)),
            ]
            yield
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)

    # No redirects: /api/<name> is no route (404), not a redirect to /api/<name>/.
    app = FastAPI(title="LLM Ops router", lifespan=lifespan, redirect_slashes=False)
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/v1/responses/{response_id}", by_response_id, methods=["GET"])
    app.add_api_route("/v1/responses/{response_id}/cancel", by_response_id, methods=["POST"])
    for path in ("/v1/{path:path}", "/tokenize", "/detokenize"):
        app.add_api_route(path, by_body, methods=["POST"])
    app.add_api_route("/api/{model}/{route:path}", by_path, methods=["GET", "POST"])
    app.add_api_route("/replicas", list_replicas, methods=["GET"])
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/", playground_page, methods=["GET"], include_in_schema=False)
    app.mount(URL_PREFIX, StaticFiles(directory=STATIC_DIR), name="playground")
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_middleware(LimitBody, max_bytes=max_body_bytes)
    # The playground's page and files are open: its key is typed into the page, which sends it with each call.
    app.add_middleware(RequireApiKey, keys=api_keys, open_paths=PROBES | {"/"}, open_prefixes=(URL_PREFIX + "/",))
    app.add_middleware(RequestId)
    return app
