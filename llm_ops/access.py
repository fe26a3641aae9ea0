"""Who may call the public servers (workers, the OpenAI router) and what they may send.

Each check is an ASGI middleware that answers before the app sees the request, in the error format
of the request's path (`refusal`: FastChat's for `/api/...`, vLLM's OpenAI shape for the rest):

- `RequireApiKey`: with keys configured (the `LLM_OPS_API_KEYS` environment variable, never a flag,
  so keys stay out of `ps` and logs), every path but the health and metrics probes needs
  `Authorization: Bearer <key>`; else 401 with FastChat's INVALID_AUTH_KEY (40101).
- `LimitBody`: a body over `max_bytes` gets 413 without being read any further.
- `PublicRoutes`: a worker answers only the routes LLM Ops documents; vLLM's development and admin
  endpoints (`/sleep`, `/pause`, `/collective_rpc`, runtime LoRA loading, ...) get 404.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_ops.protocol.errors import ErrorCode, Overloaded, RequestError

API_KEYS_VARIABLE = "LLM_OPS_API_KEYS"
PROBES = frozenset({"/health", "/metrics"})  # open to the front door's health checks and Prometheus
FASTCHAT_PREFIX = "/api/"
FASTCHAT_ROUTES = frozenset(
    FASTCHAT_PREFIX + name
    for name in (
        "worker_generate",
        "worker_generate_stream",
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
GENERATION_ROUTES = frozenset(
    {"/api/worker_generate", "/api/worker_generate_stream", "/v1/chat/completions", "/v1/completions"}
)


def refusal(scope: Scope, error: RequestError) -> JSONResponse:
    """`error` in the format of the path it refuses: FastChat's under /api/, vLLM's OpenAI shape elsewhere;
    with a Retry-After when it is `Overloaded`."""
    headers = {"Retry-After": str(error.retry_after)} if isinstance(error, Overloaded) else None
    if scope["path"].startswith(FASTCHAT_PREFIX) or scope["path"] == FASTCHAT_PREFIX.rstrip("/"):
        return JSONResponse(error.to_response().model_dump(), status_code=error.status_code, headers=headers)
    return JSONResponse(error.to_openai().model_dump(), status_code=error.status_code, headers=headers)


def api_keys_from_environment() -> frozenset[str]:
    """Keys from LLM_OPS_API_KEYS, separated by commas or whitespace; empty: the servers are open."""
    raw = os.environ.get(API_KEYS_VARIABLE, "")
    return frozenset(key for key in raw.replace(",", " ").split() if key)


def authorization_headers(keys: frozenset[str]) -> dict[str, str]:
    """What our own components send to a server guarded by `keys` (any one key is as good)."""
    return {"Authorization": f"Bearer {min(keys)}"} if keys else {}


class RequireApiKey:
    """With `keys`, every request needs one, but for `open_paths` and paths under `open_prefixes`."""

    def __init__(
        self,
        app: ASGIApp,
        keys: frozenset[str],
        open_paths: frozenset[str] = PROBES,
        open_prefixes: tuple[str, ...] = (),
    ):
        self.app = app
        self.open_paths, self.open_prefixes = open_paths, open_prefixes
        # Compared as digests, in constant time, so the time to refuse does not leak a key's prefix.
        self._digests = [hashlib.sha256(key.encode()).digest() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if self._digests and scope["type"] == "http" and not self._open(path):
            problem = self._problem(scope)
            if problem is not None:
                response = refusal(scope, RequestError(ErrorCode.INVALID_AUTH_KEY, problem))
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _open(self, path: str) -> bool:
        return path in self.open_paths or path.startswith(self.open_prefixes)

    def _problem(self, scope: Scope) -> str | None:
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return "this server needs an API key: send the header 'Authorization: Bearer <your key>'"
        digest = hashlib.sha256(key.strip().encode("latin-1")).digest()
        if not any(hmac.compare_digest(digest, known) for known in self._digests):
            return "the API key is not valid"  # never repeat the key: messages end up in logs
        return None


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
    """A worker's routes: FastChat's, the OpenAI ones LLM Ops documents, and the probes; 404 for the rest."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if path and not (path in FASTCHAT_ROUTES or path in OPENAI_ROUTES or path in PROBES):
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
