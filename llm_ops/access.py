"""Who may call LLM Ops' servers (workers, the router, the controller) and what they may send.

Each check is an ASGI middleware that answers before the app sees the request, in the error format
of the request's path (`refusal`: FastChat's for `/api/...`, vLLM's OpenAI shape for the rest):

- `RequireApiKey`: with client keys configured (the `LLM_OPS_API_KEYS` environment variable or the file
  `LLM_OPS_API_KEYS_FILE` names, never a flag, so keys stay out of `ps` and logs), every path but the health
  and metrics probes needs `Authorization: Bearer <key>`; else 401 with FastChat's INVALID_AUTH_KEY (40101).
  With a service key (`LLM_OPS_SERVICE_KEY`, or `LLM_OPS_SERVICE_KEY_FILE`: what LLM Ops' own services show
  each other), the paths meant for services only (registration with the controller, a worker's status) need
  that one, and a client key is refused.
- `LimitBody`: a body over `max_bytes` gets 413 without being read any further.
- `PublicRoutes`: a worker answers only the routes LLM Ops documents; vLLM's development and admin
  endpoints (`/sleep`, `/pause`, `/collective_rpc`, runtime LoRA loading, ...) get 404.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_ops.protocol.errors import ErrorCode, Overloaded, RequestError

T = TypeVar("T")
API_KEYS_VARIABLE = "LLM_OPS_API_KEYS"
SERVICE_KEY_VARIABLE = "LLM_OPS_SERVICE_KEY"
PROBES = frozenset({"/health", "/metrics"})  # open to the front door's health checks and Prometheus
FASTCHAT_PREFIX = "/api/"
FASTCHAT_ROUTES = frozenset(
    FASTCHAT_PREFIX + name
    for name in (
        "worker_generate",
        "worker_generate_stream",
        "worker_get_embeddings",
        "worker_get_status",
        "count_token",
        "worker_get_conv_template",
        "model_details",
    )
)
# What a worker serves besides FastChat's /api/... routes (vLLM's OpenAI routes for clients, and probes).
OPENAI_ROUTES = frozenset(
    {"/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/tokenize", "/detokenize"}
)
# Where a worker publishes vLLM's KV-cache events (`llm_ops.router.kv_events` subscribes): for routers only.
KV_EVENTS_ROUTE = "/kv_events"
# The prefix cache's reset (the routing benchmark's, between contenders); the router never forwards to it.
RESET_PREFIX_CACHE = "/reset_prefix_cache"
# A worker's routes for services only (with a service key): what the controller, the routers and the
# routing benchmark ask it.
WORKER_SERVICE_PATHS = frozenset({FASTCHAT_PREFIX + "worker_get_status", KV_EVENTS_ROUTE, RESET_PREFIX_CACHE})
# At the front door, under /api/<model>/: vLLM's OpenAI routes of the model; the others are FastChat's.
MODEL_OPENAI_ROUTES = ("v1/", "tokenize", "detokenize")
# vLLM's Responses API (OpenAI's) and Anthropic's Messages API, on generate models.
RESPONSES_ROUTE, MESSAGES_ROUTE = "/v1/responses", "/v1/messages"
RESPONSES_AND_MESSAGES_ROUTES = frozenset({RESPONSES_ROUTE, MESSAGES_ROUTE, MESSAGES_ROUTE + "/count_tokens"})
# The routes that run the engine (a new response or message is a generation, like a chat): admitted by the
# worker, counted against a replica's slots by the router.
GENERATION_ROUTES = frozenset(
    {
        "/api/worker_generate",
        "/api/worker_generate_stream",
        "/api/worker_get_embeddings",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        RESPONSES_ROUTE,
        MESSAGES_ROUTE,
    }
)
# A stored response's routes, by method: the id is in the path (`response_id`; in vLLM, POST
# /v1/responses/render is another route, private, which a path pattern alone would open).
STORED_RESPONSE_ROUTES = (
    ("GET", re.compile(r"/v1/responses/(?P<response_id>[^/]+)")),
    ("POST", re.compile(r"/v1/responses/(?P<response_id>[^/]+)/cancel")),
)


def stored_response_id(method: str, path: str) -> str | None:
    """The response id in the path of a stored response's route; None for any other route."""
    for route_method, pattern in STORED_RESPONSE_ROUTES:
        matched = pattern.fullmatch(path)
        if matched and method == route_method:
            return matched["response_id"]
    return None


def is_public(method: str, path: str) -> bool:
    """Whether a worker answers `method path` (else 404: vLLM's other routes stay private)."""
    named = (FASTCHAT_ROUTES, OPENAI_ROUTES, RESPONSES_AND_MESSAGES_ROUTES, PROBES)
    if path == KV_EVENTS_ROUTE:
        return method == "GET"
    if path == RESET_PREFIX_CACHE:
        return method == "POST"
    return any(path in routes for routes in named) or stored_response_id(method, path) is not None


def refusal(scope: Scope, error: RequestError) -> JSONResponse:
    """`error` in the format of the path it refuses: FastChat's under /api/, vLLM's OpenAI shape elsewhere;
    with a Retry-After when it is `Overloaded`."""
    headers = {"Retry-After": str(error.retry_after)} if isinstance(error, Overloaded) else None
    if is_fastchat_path(scope["path"]):
        return JSONResponse(error.to_response().model_dump(), status_code=error.status_code, headers=headers)
    return JSONResponse(error.to_openai().model_dump(), status_code=error.status_code, headers=headers)


def is_fastchat_path(path: str) -> bool:
    """FastChat's routes: a worker's /api/..., the front door's /api/<model>/... but a model's OpenAI routes."""
    model_route = path.split("/", 3)[3] if path.count("/") >= 3 else ""  # /api/<model>/<model_route>
    under_api = path.startswith(FASTCHAT_PREFIX) or path == FASTCHAT_PREFIX.rstrip("/")
    return under_api and not model_route.startswith(MODEL_OPENAI_ROUTES)


def from_environment(variable: str) -> str:
    """`variable`'s value, or else the content of the file `<variable>_FILE` names (a Docker secret,
    /run/secrets/...: docs/deployment.md, "Docker Swarm"); empty when neither is set."""
    value = os.environ.get(variable, "")
    path = os.environ.get(f"{variable}_FILE", "")
    if value or not path:
        return value
    with open(path, encoding="utf-8") as secret:  # missing or unreadable: the server must not start open
        return secret.read()


def api_keys_from_environment() -> frozenset[str]:
    """Keys from LLM_OPS_API_KEYS (or the file LLM_OPS_API_KEYS_FILE names), separated by commas or whitespace;
    empty: the servers are open."""
    raw = from_environment(API_KEYS_VARIABLE)
    return frozenset(key for key in raw.replace(",", " ").split() if key)


def service_key_from_environment() -> str | None:
    return from_environment(SERVICE_KEY_VARIABLE).strip() or None


def authorization_headers(keys: frozenset[str]) -> dict[str, str]:
    """What a client of a server guarded by `keys` sends (any one key is as good)."""
    return {"Authorization": f"Bearer {min(keys)}"} if keys else {}


def service_headers() -> dict[str, str]:
    """What LLM Ops' own services send each other: the service key; without one, a client key, which is
    all a server then asks for."""
    service_key = service_key_from_environment()
    return authorization_headers(frozenset({service_key}) if service_key else api_keys_from_environment())


class RequireApiKey:
    """With client `keys`, every request needs one of them or the service key, but for `open_paths` and
    paths under `open_prefixes`; with a `service_key`, `service_paths` need that one."""

    def __init__(
        self,
        app: ASGIApp,
        keys: frozenset[str],
        open_paths: frozenset[str] = PROBES,
        open_prefixes: tuple[str, ...] = (),
        service_key: str | None = None,
        service_paths: frozenset[str] = frozenset(),
    ):
        self.app = app
        self.open_paths, self.open_prefixes, self.service_paths = open_paths, open_prefixes, service_paths
        # Compared as digests, in constant time, so the time to refuse does not leak a key's prefix.
        self._service = [_digest(service_key)] if service_key else []
        self._clients = [_digest(key) for key in keys] + self._service if keys else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        accepted = self._service if self._service and path in self.service_paths else self._clients
        if accepted and scope["type"] == "http" and not self._open(path):
            problem = self._problem(scope, accepted)
            if problem is not None:
                response = refusal(scope, RequestError(ErrorCode.INVALID_AUTH_KEY, problem))
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _open(self, path: str) -> bool:
        return path in self.open_paths or path.startswith(self.open_prefixes)

    def _problem(self, scope: Scope, accepted: list[bytes]) -> str | None:
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return "this server needs an API key: send the header 'Authorization: Bearer <your key>'"
        digest = _digest(key.strip(), "latin-1")
        if not any(hmac.compare_digest(digest, known) for known in accepted):
            if accepted is self._service:
                return "this route is for LLM Ops' own services: it needs the service key"
            return "the API key is not valid"  # never repeat the key: messages end up in logs
        return None


def _digest(key: str, encoding: str = "utf-8") -> bytes:
    return hashlib.sha256(key.encode(encoding)).digest()


class LimitBody:
    """Reads the body (up to `max_bytes`) before the app does, so a larger one is refused early,
    whether it announced its length or came in chunks."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        body, ended = bytearray(), False
        while not ended:
            message = await receive()
            if message["type"] != "http.request":  # the client left: let the app see it
                await self.app(scope, replay(message, receive), send)
                return
            body += message.get("body", b"")
            ended = not message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
        await self.app(scope, replay({"type": "http.request", "body": bytes(body)}, receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"the request body is larger than this server's limit of {self.max_bytes} bytes"
        await refusal(scope, RequestError(ErrorCode.PARAM_OUT_OF_RANGE, message, 413))(scope, receive, send)


class PublicRoutes:
    """A worker's routes: FastChat's, the OpenAI and Anthropic ones LLM Ops documents, and the probes; 404 for
    the rest."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if path and not is_public(scope["method"], path):
            message = f"no such endpoint: {scope['method']} {path}"
            error = RequestError(ErrorCode.VALIDATION_TYPE_ERROR, message, 404)
            await refusal(scope, error)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def replay(first: Message, receive: Receive) -> Receive:
    """`receive`, with `first` handed out before anything it receives."""
    replayed = False

    async def receive_again() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return first
        return await receive()

    return receive_again


async def unless_client_leaves(
    work: Awaitable[T], receive: Receive, discard: Callable[[T], Awaitable[None]]
) -> T | None:
    """`work`'s result, or None if the client disconnects first: `work` is cancelled, or, if it finished in the
    same instant, its result is `discard`ed. For an app that has read the body: the next message can only be
    the client leaving."""
    work_task = asyncio.ensure_future(work)
    left = asyncio.ensure_future(_disconnect(receive))
    try:
        await asyncio.wait({work_task, left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work_task, left):
            task.cancel()
        await asyncio.gather(work_task, left, return_exceptions=True)
    if work_task.cancelled():
        return None
    if left.done() and not left.cancelled() and work_task.exception() is None:
        await discard(work_task.result())
        return None
    return work_task.result()


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
