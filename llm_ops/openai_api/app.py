"""The front door's /v1: a router, not a translator.

Every OpenAI request (`POST /v1/...`, and vLLM's `/tokenize` and `/detokenize`) goes, bytes in and
bytes out, to a replica of the model its body names (`forward`, `policy`): whatever vLLM serves for
that model works here as it works at the model's own /api/<model>/v1. `GET /v1/models` lists the
models of every registered worker, with vLLM's model cards (`max_model_len` included). `GET /` is the
playground (`llm_ops.playground`), a page that talks to this /v1 from a browser.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from llm_ops.access import PROBES, LimitBody, RequireApiKey, authorization_headers, refusal
from llm_ops.controller.client import ControllerClient
from llm_ops.logs import RequestId, pass_request_id_on
from llm_ops.openai_api.forward import forward
from llm_ops.openai_api.policy import POLICIES, worker_base_url
from llm_ops.playground import STATIC_DIR, URL_PREFIX
from llm_ops.protocol.errors import ErrorCode, RequestError
from llm_ops.serving import health
from llm_ops.settings import MAX_BODY_BYTES

WORKER_TIMEOUT = httpx.Timeout(connect=5.0, read=None, write=30.0, pool=None)  # answers can take minutes


async def routed(request: Request) -> Response:
    state = request.app.state
    body = await request.body()
    return await forward(state.http, state.policy, request.url.path, body, dict(request.headers))


async def list_models(request: Request) -> JSONResponse:
    """vLLM's model card of every served model, from one of its workers; `root` is the served name (a
    worker's model folder means nothing on this side of the front door)."""
    controller: ControllerClient = request.app.state.controller
    try:
        names = await controller.models()
        addresses = await asyncio.gather(*(controller.worker_address(name) for name in names))
    except httpx.HTTPError as error:
        raise RequestError(ErrorCode.CONTROLLER_NO_WORKER, f"the controller cannot be reached: {error!r}") from error
    workers = {worker_base_url(address) for address in addresses if address}
    cards = await asyncio.gather(*(_model_cards(request.app.state.http, worker) for worker in sorted(workers)))
    served = {card["id"]: card | {"root": card["id"]} for found in cards for card in found if card["id"] in names}
    return JSONResponse({"object": "list", "data": [served[name] for name in sorted(served)]})


async def _model_cards(http: httpx.AsyncClient, worker: str) -> list[dict[str, Any]]:
    try:
        response = await http.get(f"{worker}/v1/models", timeout=5)
        response.raise_for_status()
        cards: list[dict[str, Any]] = response.json()["data"]
        return cards
    except (httpx.HTTPError, ValueError, KeyError):
        return []  # gone since the controller last heard from it: the next call will know


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


def create_openai_app(
    controller_address: str,
    transport: httpx.AsyncBaseTransport | None = None,
    api_keys: frozenset[str] = frozenset(),
    max_body_bytes: int = MAX_BODY_BYTES,
    policy: str = "least-loaded",
) -> FastAPI:
    """`transport`: how to reach the controller and workers (tests pass in-process apps). `api_keys`:
    when given, every route but /health needs one, and requests to the workers carry one."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        headers = authorization_headers(api_keys)
        hooks = {"request": [pass_request_id_on]}
        async with httpx.AsyncClient(
            timeout=WORKER_TIMEOUT, transport=transport, headers=headers, event_hooks=hooks
        ) as http:
            app.state.http = http
            app.state.controller = ControllerClient(http, controller_address)
            app.state.policy = POLICIES[policy](app.state.controller)
            yield

    app = FastAPI(title="LLM Ops OpenAI-compatible router", lifespan=lifespan)
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    for path in ("/v1/{path:path}", "/tokenize", "/detokenize"):
        app.add_api_route(path, routed, methods=["POST"])
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
