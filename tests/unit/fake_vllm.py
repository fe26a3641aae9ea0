"""A stand-in for vLLM's OpenAI server, for testing LLM Ops' plugin (its HTTP layer) without a model.

`fake_worker` builds a FastAPI app that looks to `LLMOpsPlugin` like the one vLLM builds: the parsed
`args`, serving handlers (`openai_serving_chat`, `openai_serving_completion`, `serving_tokenization`),
and a few of vLLM's own routes (the OpenAI ones, `/metrics`, and admin ones LLM Ops must hide). Then,
as vLLM's `build_and_serve` does, the plugin's `attach_router` runs on the app, then vLLM's exception
handlers are added, and the plugin's `init_state` runs, with the engine client, before anything is
served. (vLLM's app state also holds the engine client and `vllm_config`: LLM Ops does not read them
there, so the stand-in leaves them out.)

`FakeVllm` answers every prompt with `words`, one token per word, `delay` seconds apart, as vLLM's
handlers answer: an async generator of SSE events (`"data: {json}\\n\\n"`, ending with
`"data: [DONE]\\n\\n"`), a whole response, or an `ErrorResponse`. It counts the generations that
started, finished, and were aborted (their stream closed, or their task cancelled, before the end).

Tests reach these apps in process (`asgi_client`) or served on a loopback port (`fake_worker_to_serve`,
tests/unit/served.py; the router reaches its replicas so, tests/unit/routed.py). `chat`, `completion` and
`openai_chat` are the request bodies they send.
"""

from __future__ import annotations

import asyncio
import json
from argparse import Namespace
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from unittest import mock

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import generate_latest
from pydantic import BaseModel, ValidationError
from transformers.utils.chat_template_utils import render_jinja_template
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    ChatMessage,
    DeltaMessage,
)
from vllm.entrypoints.openai.completion.protocol import (
    CompletionRequest,
    CompletionResponse,
    CompletionResponseChoice,
    CompletionResponseStreamChoice,
    CompletionStreamResponse,
)
from vllm.entrypoints.serve.engine.protocol import ErrorInfo, ErrorResponse, ModelCard, ModelList, UsageInfo
from vllm.entrypoints.serve.exception_handling.register import init_exception_handler
from vllm.entrypoints.serve.tokenize.protocol import TokenizeResponse
from vllm.exceptions import VLLMValidationError
from vllm.plugins.endpoint_plugins.interface import attach_endpoint_plugins

from llm_ops.prompts.chat_template import jinja_chat_template
from llm_ops.prompts.conversation import get_conv_template
from llm_ops.settings import WorkerOptions
from llm_ops.worker.admission import Admission
from llm_ops.worker.launch import parse_worker_args
from llm_ops.worker.plugin import LLMOpsPlugin
from llm_ops.worker.state import WorkerState
from llm_ops.worker.vllm_api import Engine

NAMES = ("fake-model", "fake.model-1.5")
CHATML = jinja_chat_template(get_conv_template("chatml"))
# vLLM's routes that LLM Ops' worker must not expose (development, admin, SageMaker).
HIDDEN_ROUTES = ("/sleep", "/wake_up", "/collective_rpc", "/pause", "/v1/load_lora_adapter", "/invocations")


class FakeTokenizer:
    """One token per whitespace-separated word; chats rendered with a real Jinja chat template."""

    def __init__(self, chat_template: str | None) -> None:
        self.chat_template = chat_template

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [len(word) for word in text.split()]

    def apply_chat_template(
        self,
        messages: list[dict[str, str]],
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        tokenize: bool = True,
    ) -> str:
        template = chat_template or self.chat_template
        if template is None:
            raise ValueError("this tokenizer has no chat template")
        rendered: Any = render_jinja_template(
            [messages], chat_template=template, add_generation_prompt=add_generation_prompt, bos_token="<s>"
        )
        return str(rendered[0][0])


def context_overflow(max_model_len: int, prompt_tokens: int, max_tokens: int) -> ErrorResponse:
    message = (
        f"This model's maximum context length is {max_model_len} tokens. However, you requested "
        f"{max_tokens} output tokens and your prompt contains {prompt_tokens} input tokens."
    )
    return ErrorResponse(error=ErrorInfo(message=message, type="BadRequestError", code=400))


@dataclass
class FakeVllm:
    """vLLM's serving handlers and engine client, scripted."""

    words: list[str] = field(default_factory=lambda: ["The", " capital", " is", " Paris", "."])
    delay: float = 0.0
    max_model_len: int = 512
    max_num_seqs: int = 128  # what vLLM's server runs at once on a CPU by default
    chat_template: str | None = CHATML  # the tokenizer's own
    error: ErrorResponse | None = None  # returned instead of any answer
    fail_after: int | None = None  # the engine fails after this many words (a stream: an error event)
    fail_seed: int | None = None  # requests with this seed fail after their first word
    healthy: bool = True
    requests: list[BaseModel] = field(default_factory=list)  # what the handlers were asked, in order
    started: int = 0
    finished: int = 0
    aborted: int = 0
    prefix_cache_resets: int = 0

    def __post_init__(self) -> None:
        self.tokenizer = FakeTokenizer(self.chat_template)
        self.renderer = SimpleNamespace(get_tokenizer=lambda: self.tokenizer)

    # The engine client.
    @property
    def model_config(self) -> SimpleNamespace:
        return SimpleNamespace(max_model_len=self.max_model_len)

    @property
    def vllm_config(self) -> SimpleNamespace:
        return SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=self.max_num_seqs))

    async def check_health(self) -> None:
        if not self.healthy:
            raise RuntimeError("the engine core died")

    async def get_supported_tasks(self) -> tuple[str, ...]:
        return ("generate",)

    def get_num_unfinished_requests(self) -> int:
        return self.started - self.finished - self.aborted

    async def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        if self.get_num_unfinished_requests():  # as vLLM: not while requests run
            return False
        self.prefix_cache_resets += 1
        return True

    # The serving handlers.
    async def create_chat_completion(self, request: ChatCompletionRequest, raw: Request | None) -> Any:
        self.requests.append(request)
        messages = [dict(message) for message in request.messages]
        try:
            prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as error:  # as vLLM's renderer: a chat its template rejects is the client's error (400)
            raise VLLMValidationError(str(error)) from error
        max_tokens = request.max_completion_tokens or request.max_tokens
        return await self._answer("chat", request, prompt, max_tokens, echo=False)

    async def create_completion(self, request: CompletionRequest, raw: Request | None) -> Any:
        self.requests.append(request)
        prompt = str(request.prompt)
        return await self._answer("completion", request, prompt, request.max_tokens or 16, echo=bool(request.echo))

    async def create_tokenize(self, request: Any, raw: Request | None) -> TokenizeResponse:
        tokens = self.tokenizer.encode(request.prompt)
        return TokenizeResponse(count=len(tokens), max_model_len=self.max_model_len, tokens=tokens)

    async def _answer(self, kind: str, request: Any, prompt: str, max_tokens: int | None, echo: bool) -> Any:
        if self.error is not None:
            return self.error
        prompt_tokens = len(self.tokenizer.encode(prompt))
        if max_tokens is None:  # as vLLM: the room the prompt leaves
            max_tokens = max(1, self.max_model_len - prompt_tokens)
        if prompt_tokens + max_tokens > self.max_model_len:
            return context_overflow(self.max_model_len, prompt_tokens, max_tokens)
        words = self.words[:max_tokens]
        head = prompt if echo else ""
        fails = 1 if self.fail_seed is not None and request.seed == self.fail_seed else self.fail_after
        if request.stream:
            options = request.stream_options
            usage = options is not None and bool(options.include_usage)
            continuous = usage and bool(options.continuous_usage_stats)
            return self._events(kind, request.model, words, max_tokens, prompt_tokens, head, usage, continuous, fails)
        return await self._whole(kind, request.model, words, max_tokens, prompt_tokens, head, fails)

    def _reason(self, words: list[str], max_tokens: int) -> str:
        return "length" if len(words) == max_tokens else "stop"

    async def _whole(
        self,
        kind: str,
        model: str,
        words: list[str],
        max_tokens: int,
        prompt_tokens: int,
        head: str,
        fails: int | None,
    ) -> BaseModel:
        self.started += 1
        try:
            for index, _ in enumerate(words):
                await asyncio.sleep(self.delay)  # the scripted engine's pace: deliberate
                if fails is not None and index == fails:
                    self.finished += 1
                    error = ErrorInfo(message="simulated engine failure", type="InternalServerError", code=500)
                    return ErrorResponse(error=error)
        except asyncio.CancelledError:
            self.aborted += 1
            raise
        self.finished += 1
        usage = UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=len(words))
        usage.total_tokens = prompt_tokens + len(words)
        text, reason = head + "".join(words), self._reason(words, max_tokens)
        if kind == "chat":
            message = ChatMessage(role="assistant", content=text)
            chat_choice = ChatCompletionResponseChoice(index=0, message=message, finish_reason=reason)
            return ChatCompletionResponse(model=model, choices=[chat_choice], usage=usage)
        choice = CompletionResponseChoice(index=0, text=text, finish_reason=reason)
        return CompletionResponse(model=model, choices=[choice], usage=usage)

    async def _events(
        self,
        kind: str,
        model: str,
        words: list[str],
        max_tokens: int,
        prompt_tokens: int,
        head: str,
        usage: bool,
        continuous: bool,
        fails: int | None,
    ) -> AsyncGenerator[str, None]:
        self.started += 1
        done = False

        def event(document: BaseModel) -> str:
            return f"data: {document.model_dump_json(exclude_unset=True)}\n\n"

        def chunk(text: str, reason: str | None, generated: int, role: bool = False) -> BaseModel:
            counts = UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=generated) if continuous else None
            if kind == "chat":
                delta = DeltaMessage(role="assistant", content=text) if role else DeltaMessage(content=text)
                chat_choice = ChatCompletionResponseStreamChoice(index=0, delta=delta, finish_reason=reason)
                return ChatCompletionStreamResponse(model=model, choices=[chat_choice], usage=counts)
            choice = CompletionResponseStreamChoice(index=0, text=text, finish_reason=reason)
            return CompletionStreamResponse(model=model, choices=[choice], usage=counts)

        try:
            if kind == "chat":
                yield event(chunk("", None, 0, role=True))
            for index, word in enumerate(words):
                await asyncio.sleep(self.delay)  # the scripted engine's pace: deliberate
                if fails is not None and index == fails:
                    error = ErrorInfo(message="simulated engine failure", type="InternalServerError", code=500)
                    yield f"data: {json.dumps({'error': error.model_dump()})}\n\n"
                    yield "data: [DONE]\n\n"
                    done = True
                    return
                last = index == len(words) - 1
                text = (head if index == 0 else "") + word
                yield event(chunk(text, self._reason(words, max_tokens) if last else None, index + 1))
            if usage:
                total = UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=len(words))
                total.total_tokens = prompt_tokens + len(words)
                final: BaseModel = (
                    ChatCompletionStreamResponse(model=model, choices=[], usage=total)
                    if kind == "chat"
                    else CompletionStreamResponse(model=model, choices=[], usage=total)
                )
                yield event(final)
            yield "data: [DONE]\n\n"
            done = True
        finally:
            if done:
                self.finished += 1
            else:
                self.aborted += 1


def answered(answer: Any) -> Response:
    """An answer of the handlers as vLLM's OpenAI routes send it."""
    if isinstance(answer, ErrorResponse):
        return JSONResponse(answer.model_dump(), status_code=answer.error.code)
    if isinstance(answer, BaseModel):
        return JSONResponse(answer.model_dump())
    return StreamingResponse(answer, media_type="text/event-stream")


def invalid(error: ValidationError) -> JSONResponse:
    info = ErrorInfo(message=str(error), type="BadRequestError", code=400)
    return JSONResponse(ErrorResponse(error=info).model_dump(), status_code=400)


def worker_args(flags: Sequence[str] = (), names: Sequence[str] = NAMES, chat_template: str | None = None) -> Namespace:
    """The worker's flags, with what `resolve_defaults` would fill in set by hand (no model is converted)."""
    args = parse_worker_args(["--model", "/models/fake", "--served-model-name", *names, *flags])
    args.chat_template = chat_template
    return args


def vllm_app(vllm: FakeVllm, args: Namespace) -> FastAPI:
    """vLLM's app before the plugin: its state and some of its routes."""
    app = FastAPI()
    app.state.args = args
    app.state.openai_serving_chat = vllm
    app.state.openai_serving_completion = vllm
    app.state.serving_tokenization = vllm

    def openai_route(
        request_type: type[BaseModel], create: Callable[[Any, Request], Awaitable[Any]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def route(raw: Request) -> Response:
            try:
                request = request_type.model_validate_json(await raw.body())
            except ValidationError as error:
                return invalid(error)
            return answered(await create(request, raw))

        return route

    app.add_api_route(
        "/v1/chat/completions", openai_route(ChatCompletionRequest, vllm.create_chat_completion), methods=["POST"]
    )
    app.add_api_route("/v1/completions", openai_route(CompletionRequest, vllm.create_completion), methods=["POST"])

    @app.get("/v1/models")
    async def models() -> ModelList:
        cards = [
            ModelCard(id=name, root="/models/fake", max_model_len=vllm.max_model_len) for name in args.served_model_name
        ]
        return ModelList(data=cards)

    @app.get("/health")
    async def health() -> Response:  # vLLM's own, which the plugin's must replace
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest().decode())

    async def hidden() -> dict[str, str]:
        return {"status": "vLLM's admin route answered"}

    for path in HIDDEN_ROUTES:
        app.add_api_route(path, hidden, methods=["GET", "POST"])
    return app


async def fake_worker(
    vllm: FakeVllm | None = None,
    flags: Sequence[str] = (),
    names: Sequence[str] = NAMES,
    chat_template: str | None = None,
) -> FastAPI:
    """vLLM's app with LLM Ops attached and initialised, ready to serve. API keys: from the environment."""
    vllm = vllm or FakeVllm()
    args = worker_args(flags, names, chat_template)
    app = vllm_app(vllm, args)
    plugin = LLMOpsPlugin()
    # vLLM's own wiring: it calls attach_router, then lets the plugin's routes replace its own (/health).
    with mock.patch("vllm.plugins.load_endpoint_plugins", return_value=[plugin]):
        attach_endpoint_plugins(app, ("generate",))
    init_exception_handler(app)  # vLLM's own, as its build_app adds them after the plugins
    await plugin.init_state(vllm, app.state, args)
    return app


def fake_worker_to_serve(vllm: FakeVllm | None = None, flags: Sequence[str] = ()) -> FastAPI:
    """`fake_worker`, built in an event loop of its own (from sync or async code alike), for `served`,
    which serves it in a thread with yet another loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, fake_worker(vllm, flags)).result()


def worker_state(stop: list[str] | None = None, stop_token_ids: list[int] | None = None) -> WorkerState:
    """The plugin's state of a worker serving fake-model, built by hand (no app)."""
    return WorkerState(
        options=WorkerOptions(),
        engine=Engine(FakeVllm()),
        model_names=["fake-model"],
        admission=Admission(1, 0, 1),
        chat_template=None,
        conv=None,
        stop=stop or [],
        stop_token_ids=stop_token_ids or [],
    )


def chat(**fields: Any) -> dict[str, Any]:
    """A FastChat chat request to fake-model; `fields` override."""
    body: dict[str, Any] = {
        "model_identifier": "fake-model",
        "generation_mode": "chat",
        "messages": [{"role": "user", "text": "What is the capital of France?"}],
    }
    return body | fields


def completion(**fields: Any) -> dict[str, Any]:
    """A FastChat completion request to fake-model; `fields` override."""
    return {"model_identifier": "fake-model", "generation_mode": "completion", "prompt": "Once upon"} | fields


def openai_chat(**fields: Any) -> dict[str, Any]:
    """An OpenAI chat completion request to fake-model; `fields` override."""
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    return body | fields


def asgi_client(app: Any, base_url: str = "http://worker") -> httpx.AsyncClient:
    """A client that calls `app` in process."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)
