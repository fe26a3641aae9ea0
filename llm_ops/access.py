"""Who may call the public servers (worker `/api/...`, OpenAI API `/v1/...`) and how much they may send.

Both checks are ASGI middlewares that answer before the app sees the request, each server shaping
the refusal in its own error format (`Refuse`):

- `RequireApiKey`: with keys configured (the `LLM_OPS_API_KEYS` environment variable, never a flag,
  so keys stay out of `ps` and logs), a protected path needs `Authorization: Bearer <key>`; else 401
  with FastChat's INVALID_AUTH_KEY (40101).
- `LimitBody`: a body over `max_bytes` gets 413 without being read any further.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_ops.protocol.errors import ErrorCode

API_KEYS_VARIABLE = "LLM_OPS_API_KEYS"

Refuse = Callable[[int, ErrorCode, str], Response]  # (HTTP status, error code, message) -> response


def api_keys_from_environment() -> frozenset[str]:
    """Keys from LLM_OPS_API_KEYS, separated by commas or whitespace; empty: the servers are open."""
    raw = os.environ.get(API_KEYS_VARIABLE, "")
    return frozenset(key for key in raw.replace(",", " ").split() if key)


def authorization_headers(keys: frozenset[str]) -> dict[str, str]:
    """What our own components send to a server guarded by `keys` (any one key is as good)."""
    return {"Authorization": f"Bearer {min(keys)}"} if keys else {}


class RequireApiKey:
    def __init__(self, app: ASGIApp, keys: frozenset[str], protected_prefixes: tuple[str, ...], refuse: Refuse):
        self.app = app
        self.protected_prefixes = protected_prefixes
        self.refuse = refuse
        # Compared as digests, in constant time, so the time to refuse does not leak a key's prefix.
        self._digests = [hashlib.sha256(key.encode()).digest() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._digests and scope["type"] == "http" and scope["path"].startswith(self.protected_prefixes):
            problem = self._problem(scope)
            if problem is not None:
                response = self.refuse(401, ErrorCode.INVALID_AUTH_KEY, problem)
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

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

    def __init__(self, app: ASGIApp, max_bytes: int, refuse: Refuse) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.refuse = refuse

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
                await self.app(scope, _replay(message, receive), send)
                return
            body += message.get("body", b"")
            ended = not message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
        await self.app(scope, _replay({"type": "http.request", "body": bytes(body)}, receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"the request body is larger than this server's limit of {self.max_bytes} bytes"
        await self.refuse(413, ErrorCode.PARAM_OUT_OF_RANGE, message)(scope, receive, send)


def _replay(first: Message, receive: Receive) -> Receive:
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return first
        return await receive()

    return replay
