"""A request, bytes in and bytes out, to a replica the policy picks.

The answer comes back as the worker sends it, streamed events as they arrive, with the worker's status
and error body. A replica that refuses the connection, or answers 503 (it is shutting down, or its
engine died), is set aside and another one is tried: nothing has reached the client yet; no replica is
tried twice for one request. Once the answer has started it is never retried; if the worker breaks
mid-answer, the stream ends with an error event in the route's format and the replica is set aside.

A request that names a stored response (`llm_ops.router.stored`) goes to the replica holding it, and only
there: if that one fails, the client gets 503, as no other replica could answer.

Generation requests count against a replica's running slots: when every replica of the model is full,
the router answers 429 with Retry-After at once (nothing waits here). A client that leaves closes the
connection to the worker, which aborts the generation there.

The connections to the workers are aiohttp's: its C parser relays an event in a third of the CPU time
httpx takes (benchmarks/relay_capacity.py, docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from llm_ops.access import GENERATION_ROUTES, MESSAGES_ROUTE, RESPONSES_ROUTE, unless_client_leaves
from llm_ops.logs import request_id_headers
from llm_ops.protocol.errors import AnthropicError, AnthropicErrorEvent, ErrorCode, Overloaded, RequestError
from llm_ops.protocol.framing import encode_chunk
from llm_ops.router import stored
from llm_ops.router.policy import Policy, RoutedRequest
from llm_ops.router.replicas import Replica, Replicas

logger = logging.getLogger(__name__)

PASSED_ON = ("content-type", "accept")  # request headers the worker sees; the key is the router's own
ANSWERED_WITH = ("content-type", "retry-after")  # the worker's response headers the client sees
RETRY_AFTER = 1  # seconds, when every replica is full: slots free up as answers end
UNREACHABLE = (aiohttp.ClientConnectionError, asyncio.TimeoutError)  # refused, reset, or no answer to connect


@dataclass
class Router:
    http: aiohttp.ClientSession
    replicas: Replicas
    policy: Policy

    async def forward(self, request: RoutedRequest, method: str, headers: dict[str, str], receive: Receive) -> Response:
        """The answer of a replica of `request.model`; `receive`: the client's, to notice it leave while the
        worker has not answered yet (a request that does not stream answers only at its end)."""
        sent_headers = {name: value for name, value in headers.items() if name in PASSED_ON} | request_id_headers()
        counted = request.path in GENERATION_ROUTES
        holder = self.holder(request, method, counted)
        tried: list[Replica] = []
        while True:
            replica = holder or await self.choose(request, tried, counted)
            tried.append(replica)
            ended = self._start(request, replica) if counted else _nothing
            url = f"{replica.url}{request.path}" + (f"?{request.query}" if request.query else "")
            sending = self._send(method, url, stored.body_for(request, replica.url), sent_headers)
            try:
                answer = await unless_client_leaves(sending, receive, _close)
            except UNREACHABLE as error:
                ended()
                replica.set_aside(f"{error!r}")
                if holder:
                    raise _holder_failed(request, method, "cannot be reached") from None
                continue
            except BaseException:
                ended()
                raise
            if answer is None:  # the client left: closing the connection stopped the generation
                ended()
                return Response(status_code=499)
            if answer.status == 503:
                answer.close()
                ended()
                replica.set_aside("it answered 503")
                if holder:
                    raise _holder_failed(request, method, "answered 503 (it is shutting down, or its engine died)")
                continue
            logger.info("%s for %s: %s answered %d", request.path, request.model, replica.url, answer.status)
            return RelayedAnswer(answer, replica, request.path, ended)

    async def _send(self, method: str, url: str, body: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        return await self.http.request(method, url, data=body, headers=headers)

    async def choose(self, request: RoutedRequest, tried: list[Replica], counted: bool) -> Replica:
        replicas = self.replicas.of_model(request.model)
        if not replicas and not self.replicas.listed:
            message = "the router has not heard from the controller yet: try again in a moment"
            raise RequestError(ErrorCode.CONTROLLER_NO_WORKER, message)
        if not replicas:
            message = f"The model `{request.model}` does not exist or has no worker"
            raise RequestError(ErrorCode.INVALID_MODEL, message, param="model")
        healthy = [replica for replica in replicas if replica.admitted and replica not in tried]
        candidates = [replica for replica in healthy if replica.has_room or not counted]
        if candidates:
            return await self.policy.choose(request, candidates, tried)
        if healthy:
            running = sum(replica.busy for replica in healthy)
            message = (
                f"every replica of {request.model} is at capacity ({running} requests running): retry after a moment"
            )
            raise Overloaded(message, RETRY_AFTER)
        if tried:
            message = f"no replica of {request.model} could be reached ({len(tried)} tried); try again"
        else:
            message = f"no replica of {request.model} is healthy at the moment; try again"
        raise RequestError(ErrorCode.CONTROLLER_NO_WORKER, message)

    def holder(self, request: RoutedRequest, method: str, counted: bool) -> Replica | None:
        """The replica holding the stored response `request` names, admitted or not: no other could answer.
        None for a request that names none, or names one by an id the router did not make and has a model
        to be routed by; `RequestError` (404) when no replica the router knows carries the id's tag."""
        response_id = stored.named_response(request, method)
        if response_id is None:
            return None
        tag = stored.tag_in(response_id)
        if tag is None and request.model:
            return None
        if not self.replicas.listed:
            message = "the router has not heard from the controller yet: try again in a moment"
            raise RequestError(ErrorCode.CONTROLLER_NO_WORKER, message)
        holders = [replica for replica in self.replicas if tag is not None and stored.tag_of(replica.url) == tag]
        if not holders:
            raise RequestError(ErrorCode.VALIDATION_TYPE_ERROR, _not_held(response_id, tag), 404, _param(request))
        if counted and not holders[0].has_room:
            message = f"the replica holding response {response_id} is at capacity: retry after a moment"
            raise Overloaded(message, RETRY_AFTER)
        return holders[0]

    def _start(self, request: RoutedRequest, replica: Replica) -> Callable[[], None]:
        """Count the request on `replica`; returns what ends it (once, however often it is called)."""
        replica.in_flight += 1
        done = False

        def end() -> None:
            nonlocal done
            if not done:
                done = True
                replica.in_flight -= 1

        return end


def _nothing() -> None:
    pass


def _param(request: RoutedRequest) -> str:
    return "previous_response_id" if request.path == RESPONSES_ROUTE else "response_id"


def _not_held(response_id: str, tag: str | None) -> str:
    if tag is None:
        return (
            f"no replica is known to hold response {response_id}: its id was not made by LLM Ops' router (a "
            "`request_id` the client chose), so the router cannot tell which replica stored it"
        )
    return (
        f"no replica holds response {response_id}: it was made by a replica that has since gone (stopped, or "
        "restarted at another address), and a stored response lives only in the memory of the replica that made it"
    )


def _holder_failed(request: RoutedRequest, method: str, what: str) -> RequestError:
    response_id = stored.named_response(request, method)
    message = f"the replica holding response {response_id} {what}; no other replica holds it: try again later"
    return RequestError(ErrorCode.CONTROLLER_NO_WORKER, message, param=_param(request))


async def _close(answer: aiohttp.ClientResponse) -> None:
    answer.close()


class RelayedAnswer(StreamingResponse):
    """The worker's answer, relayed; however the relay ends (done, broken, the client gone), the
    connection to the worker is released (closed unless the answer ended) and the request stops counting
    on the replica."""

    def __init__(self, answer: aiohttp.ClientResponse, replica: Replica, path: str, ended: Callable[[], None]) -> None:
        kept = {name: answer.headers[name] for name in ANSWERED_WITH if name in answer.headers}
        super().__init__(self._relay(), status_code=answer.status, headers=kept)
        self.answer, self.replica, self.path, self.ended = answer, replica, path, ended

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.answer.content.is_eof():
                self.answer.release()  # whole: the connection serves the next request
            else:
                self.answer.close()  # the client left: the worker sees its connection close and aborts
            self.ended()

    async def _relay(self) -> AsyncIterator[bytes]:
        try:
            async for data in self.answer.content.iter_any():
                yield data
        except aiohttp.ClientError as error:  # the worker died mid-answer
            self.replica.set_aside(f"its answer broke: {error!r}")
            yield self._error_tail(f"the worker serving this request stopped answering: {error!r}")

    def _error_tail(self, message: str) -> bytes:
        """The end of a broken answer, as the route ends one with an error."""
        failure = RequestError(ErrorCode.INTERNAL_ERROR, message, 502)
        if self.path == "/api/worker_generate_stream":
            return encode_chunk(failure.to_response())
        if not self.answer.headers.get("content-type", "").startswith("text/event-stream"):
            return b""
        if self.path == MESSAGES_ROUTE:  # Anthropic's clients skip an event without a name
            event = AnthropicErrorEvent(error=AnthropicError(type="api_error", message=message))
            return b"event: error\ndata: " + event.model_dump_json().encode() + b"\n\n"
        return b"data: " + failure.to_openai().model_dump_json().encode() + b"\n\n"
