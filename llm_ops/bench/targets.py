"""Sending one streaming completion to a target and timing it: the worker protocol (targets a and b)
and vLLM's OpenAI server (target c).

Both streams say how many output tokens there are so far in every chunk (`usage.completion_tokens`;
vLLM does with `stream_options.continuous_usage_stats`), so a chunk that raises the count is a token
arrival, however many tokens it brings and whatever its text holds.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
from httpx_sse import EventSource

from llm_ops.bench.stats import Arrival, RequestRecord
from llm_ops.protocol.framing import iter_chunks

Clock = Callable[[], float]
SSE_DONE = "[DONE]"


class StreamError(Exception):
    """The stream said it failed, or ended before it said it was finished."""


class Target(Protocol):
    key: str
    name: str
    url: str

    async def send(self, max_new_tokens: int) -> RequestRecord: ...


def http_client(
    pool_size: int, timeout: float, ca_file: Path | None = None, headers: dict[str, str] | None = None
) -> httpx.AsyncClient:
    """One client per target: HTTP/1.1, `pool_size` connections kept, TLS verified against `ca_file`."""
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
    # vLLM's server closes idle connections after 5 s: forget them sooner, never send on a closing one.
    limits = httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size, keepalive_expiry=4)
    return httpx.AsyncClient(
        verify=verify, limits=limits, timeout=httpx.Timeout(timeout, connect=10), headers=headers, trust_env=False
    )


@dataclass
class StreamingTarget:
    """What both kinds share: POST a body, read the token count after each chunk, time the arrivals."""

    key: str
    name: str
    url: str
    client: httpx.AsyncClient
    model: str
    prompt: str
    clock: Clock = field(default=time.perf_counter)

    def body(self, max_new_tokens: int) -> dict[str, Any]:
        raise NotImplementedError

    def token_counts(self, response: httpx.Response) -> AsyncIterator[int]:
        """Output tokens so far, after each chunk; raises StreamError."""
        raise NotImplementedError

    async def send(self, max_new_tokens: int) -> RequestRecord:
        start = self.clock()
        arrivals: list[Arrival] = []
        tokens, error = 0, None
        try:
            async with self.client.stream("POST", self.url, json=self.body(max_new_tokens)) as response:
                if response.status_code != 200:
                    raise StreamError(f"HTTP {response.status_code}: {(await response.aread())[:300].decode()!r}")
                async for total in self.token_counts(response):
                    if total > tokens:
                        arrivals.append(Arrival(self.clock(), total - tokens))
                        tokens = total
        except (httpx.HTTPError, StreamError, ValueError, KeyError, TypeError) as failure:
            error = f"{type(failure).__name__}: {failure}"
        return RequestRecord(start, self.clock(), tuple(arrivals), tokens, error)


@dataclass
class WorkerTarget(StreamingTarget):
    """POST {base}/worker_generate_stream: JSON chunks each followed by a NUL byte."""

    stream_text: str = "delta"

    def body(self, max_new_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model_identifier": self.model,
            "generation_mode": "completion",
            "prompt": self.prompt,
            "temperature": 0,
            "max_new_tokens": max_new_tokens,
        }
        if self.stream_text != "cumulative":  # FastChat's default; a worker without the field refuses it
            body["stream_text"] = self.stream_text
        return body

    async def token_counts(self, response: httpx.Response) -> AsyncIterator[int]:
        finished = False
        async for raw in iter_chunks(response.aiter_bytes()):
            chunk = json.loads(raw)
            if chunk.get("error_code", 0) != 0:
                raise StreamError(f"error_code {chunk['error_code']}: {chunk.get('text')!r}")
            finished = chunk.get("finish_reason") is not None
            yield int(chunk["usage"]["completion_tokens"])
        if not finished:
            raise StreamError("the stream ended without a finish_reason")


@dataclass
class OpenAITarget(StreamingTarget):
    """POST {base}/v1/completions with stream: server-sent events, `data: [DONE]` last."""

    def body(self, max_new_tokens: int) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt": self.prompt,
            "max_tokens": max_new_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "ignore_eos": False,
        }

    async def token_counts(self, response: httpx.Response) -> AsyncIterator[int]:
        finished = done = False
        async for sse in EventSource(response).aiter_sse():
            data = sse.data
            if data == SSE_DONE:  # read on to the stream's end: a connection left mid-answer is not reused
                done = True
                continue
            if done:
                raise StreamError(f"an event after data: [DONE]: {data[:100]!r}")
            event = json.loads(data)
            if "error" in event:
                raise StreamError(f"error event: {event['error']!r}")
            finished = finished or any(choice.get("finish_reason") for choice in event.get("choices") or [])
            if event.get("usage") is None:
                raise StreamError("a chunk without usage: the server ignored stream_options.continuous_usage_stats")
            yield int(event["usage"]["completion_tokens"])
        if not (done and finished):
            raise StreamError("the stream ended without a finish_reason and data: [DONE]")


def worker_target(
    key: str, name: str, base: str, client: httpx.AsyncClient, model: str, prompt: str, stream_text: str
) -> WorkerTarget:
    url = f"{base.rstrip('/')}/worker_generate_stream"
    return WorkerTarget(key, name, url, client, model, prompt, stream_text=stream_text)


def openai_target(key: str, name: str, base: str, client: httpx.AsyncClient, model: str, prompt: str) -> OpenAITarget:
    return OpenAITarget(key, name, f"{base.rstrip('/')}/v1/completions", client, model, prompt)
