"""A request, bytes in and bytes out, to a replica of the model it names.

The body is read once (the router's `LimitBody` has it already) for its `model` field, and sent on
unchanged; the answer comes back as the worker sends it, SSE events as they arrive, with the
worker's status and error body (vLLM's OpenAI shape). A replica that refuses the connection, or
answers 503 because it is shutting down, is reported to the policy and another one is tried:
nothing has reached the client yet. Once the answer has started it is never retried. A client
that leaves closes the connection to the worker, which aborts the generation there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import anyio
import httpx
from starlette.responses import Response, StreamingResponse

from llm_ops.openai_api.policy import NoController, ReplicaPolicy
from llm_ops.protocol.errors import ErrorCode, RequestError

logger = logging.getLogger(__name__)

ATTEMPTS = 3  # replicas tried when one cannot be reached (it died, the controller does not know yet)
PASSED_ON = ("content-type", "accept")  # request headers the worker sees; the key is the router's own
ANSWERED_WITH = ("content-type", "retry-after")  # the worker's response headers the client sees


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


async def forward(
    http: httpx.AsyncClient, policy: ReplicaPolicy, path: str, body: bytes, headers: dict[str, str]
) -> Response:
    """The answer of a replica of the body's model to `POST path`."""
    model = model_of(body)
    sent_headers = {name: value for name, value in headers.items() if name in PASSED_ON}
    for _ in range(ATTEMPTS):
        worker = await _choose(policy, model, body)
        try:
            request = http.build_request("POST", f"{worker}{path}", content=body, headers=sent_headers)
            answer = await http.send(request, stream=True)
        except httpx.TransportError as error:
            logger.warning("worker %s unreachable: %r", worker, error)
            await policy.unreachable(worker)
            continue
        if answer.status_code == 503:  # shutting down, or its engine died: another replica can answer
            await answer.aclose()
            await policy.unreachable(worker)
            continue
        logger.info("%s for %s: %s answered %d", path, model, worker, answer.status_code)
        kept = {name: answer.headers[name] for name in ANSWERED_WITH if name in answer.headers}
        return StreamingResponse(_relay(answer), status_code=answer.status_code, headers=kept)
    raise RequestError(ErrorCode.CONTROLLER_NO_WORKER, f"no worker serving {model} could be reached; try again")


async def _choose(policy: ReplicaPolicy, model: str, body: bytes) -> str:
    try:
        worker = await policy.choose(model, body)
    except NoController as error:
        raise RequestError(ErrorCode.CONTROLLER_NO_WORKER, str(error)) from error
    if worker is None:
        raise RequestError(
            ErrorCode.INVALID_MODEL, f"The model `{model}` does not exist or has no worker", param="model"
        )
    return worker


async def _relay(answer: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for data in answer.aiter_raw():
            yield data
    except httpx.HTTPError as error:  # the worker died mid-answer
        logger.warning("answer from %s broke: %r", answer.request.url, error)
        if answer.headers.get("content-type", "").startswith("text/event-stream"):  # end it as vLLM ends one
            message = f"the worker serving this request stopped answering: {error!r}"
            failure = RequestError(ErrorCode.INTERNAL_ERROR, message, 502).to_openai()
            yield b"data: " + failure.model_dump_json().encode() + b"\n\n"
    finally:
        with anyio.CancelScope(shield=True):  # the client left: close the worker's stream even so
            await answer.aclose()
