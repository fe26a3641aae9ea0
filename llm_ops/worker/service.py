"""What a worker does with a request: validate it against the model, build the prompt, admit it, run it.

`prepare` does every check that can refuse a request, so refusals are plain 4xx JSON answers and a
stream that has started only ends because generation ended. `admit` hands out a running slot or
refuses with 429 (see `admission`); whoever holds a slot releases it however the request ends.
Closing a `stream` early aborts its engine request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace

from llm_ops.engine import Engine, SamplingOptions
from llm_ops.prompts.build import ChatRenderer, Prompt, build_prompt
from llm_ops.protocol.errors import ErrorCode, RequestError
from llm_ops.protocol.worker import GenerateChunk, GenerateRequest, Usage, WorkerStatus
from llm_ops.worker.admission import Admission, Slot
from llm_ops.worker.metrics import WorkerMetrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedRequest:
    request_id: str
    mode: str  # chat or completion
    received_at: float  # time.perf_counter() when the worker took the request up
    prompt: Prompt
    prompt_token_ids: list[int]
    options: SamplingOptions
    echo: bool
    deltas: bool = False  # stream chunks carry new text only


class WorkerService:
    def __init__(
        self, engine: Engine, model_names: list[str], renderer: ChatRenderer, admission: Admission | None = None
    ) -> None:
        self.engine = engine
        self.model_names = model_names
        self.renderer = renderer
        self.admission = admission or Admission(max_running=64, max_waiting=64, max_wait_seconds=30)
        self.metrics = WorkerMetrics(model_names[0])
        self.draining = False  # set on SIGTERM: health says so, and the front door routes elsewhere

    def status(self) -> WorkerStatus:
        """FastChat's queue length: requests running plus requests waiting for a slot."""
        return WorkerStatus(model_names=self.model_names, queue_length=self.admission.running + self.admission.waiting)

    async def admit(self) -> Slot:
        return await self.admission.acquire()

    def count_tokens(self, text: str) -> int:
        return len(self.engine.tokenizer().encode(text))

    async def prepare(self, request: GenerateRequest) -> PreparedRequest:
        received_at = time.perf_counter()
        if request.model_identifier not in self.model_names:
            raise RequestError(
                ErrorCode.INVALID_MODEL,
                f"this worker serves {', '.join(map(repr, self.model_names))}, "
                f"not model_identifier {request.model_identifier!r}",
            )
        self._check_token_ids(request.stop_token_ids or [])
        # Templates and tokenizers are CPU work: keep them off the event loop.
        prompt = await asyncio.to_thread(build_prompt, request, self.renderer)
        token_ids = await asyncio.to_thread(
            self.engine.tokenizer().encode, prompt.text, add_special_tokens=prompt.add_special_tokens
        )
        max_tokens = self._max_new_tokens(request, len(token_ids))
        options = SamplingOptions(
            max_tokens=max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            stop=tuple(request.stop_strings() + prompt.stop),
            stop_token_ids=tuple((request.stop_token_ids or []) + prompt.stop_token_ids),
            repetition_penalty=request.repetition_penalty,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            seed=request.seed,
        )
        mode, deltas = request.generation_mode, request.stream_text == "delta"
        return PreparedRequest(uuid.uuid4().hex, mode, received_at, prompt, token_ids, options, request.echo, deltas)

    def _check_token_ids(self, token_ids: list[int]) -> None:
        """vLLM refuses ids outside the vocabulary only once the request is running (an engine error)."""
        vocabulary = len(self.engine.tokenizer())
        unknown = [token_id for token_id in token_ids if token_id >= vocabulary]
        if unknown:
            raise RequestError(
                ErrorCode.PARAM_OUT_OF_RANGE,
                f"stop_token_ids: {unknown[:5]} are not token ids of this model (its vocabulary has {vocabulary})",
            )

    def _max_new_tokens(self, request: GenerateRequest, prompt_tokens: int) -> int:
        """An explicit max_new_tokens must fit the context; the default shrinks to what is left."""
        context = self.engine.max_model_len
        room = context - prompt_tokens
        if room < 1:
            raise RequestError(
                ErrorCode.CONTEXT_OVERFLOW,
                f"the prompt has {prompt_tokens} tokens but the model's context holds {context}: "
                f"shorten the prompt or the conversation",
            )
        if "max_new_tokens" not in request.model_fields_set:
            return min(request.max_new_tokens, room)
        if request.max_new_tokens > room:
            raise RequestError(
                ErrorCode.CONTEXT_OVERFLOW,
                f"the prompt has {prompt_tokens} tokens and max_new_tokens asks for {request.max_new_tokens} more, "
                f"but the model's context holds {context}: lower max_new_tokens to at most {room}",
            )
        return request.max_new_tokens

    async def stream(self, prepared: PreparedRequest) -> AsyncGenerator[GenerateChunk, None]:
        """Chunks with the text so far (or, with `prepared.deltas`, the new text; an echoed prompt comes
        with the first). Closing this iterator aborts the engine request."""
        head = prepared.prompt.text if prepared.echo else ""  # what comes before the next delta's text
        prompt_tokens = len(prepared.prompt_token_ids)
        completion_tokens = 0
        timer = self.metrics.timer(prepared.mode, prompt_tokens, prepared.received_at)
        outcome = "aborted"  # unless it ends otherwise: the client left, the iterator was closed
        deltas = self.engine.generate(prepared.prompt_token_ids, prepared.options, prepared.request_id)
        try:
            async with contextlib.aclosing(deltas):  # closing the engine stream now, not at GC, aborts now
                async for delta in deltas:
                    timer.delta(delta)
                    text = head + delta.text
                    head = "" if prepared.deltas else text
                    completion_tokens += delta.token_count
                    outcome = "finished" if delta.finish_reason else outcome
                    yield GenerateChunk(
                        text=text,
                        usage=Usage.of(prompt_tokens, completion_tokens),
                        finish_reason=delta.finish_reason,
                    )
        except Exception as error:  # an engine failure ends the stream with an error chunk, not a cut
            logger.exception("request %s failed in the engine", prepared.request_id)
            outcome = "error"
            yield GenerateChunk(
                text=f"the engine failed while generating: {error}",
                error_code=ErrorCode.INTERNAL_ERROR,
                usage=Usage.of(prompt_tokens, completion_tokens),
                finish_reason="error",
            )
        finally:
            timer.end(outcome)
            logger.info(
                "%s %s request: %d prompt tokens, %d generated",
                outcome,
                prepared.mode,
                prompt_tokens,
                completion_tokens,
                extra={"engine_request_id": prepared.request_id, "outcome": outcome, "generated": completion_tokens},
            )

    async def generate(self, prepared: PreparedRequest) -> GenerateChunk:
        """The whole answer: the stream's last chunk."""
        last: GenerateChunk | None = None
        async with contextlib.aclosing(self.stream(replace(prepared, deltas=False))) as stream:
            async for chunk in stream:
                last = chunk
        if last is None:  # the engine ended without a single output
            raise RuntimeError(f"engine returned no output for request {prepared.request_id}")
        return last
