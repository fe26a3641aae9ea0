"""The only module that imports vLLM: builds an `AsyncLLM` from settings and streams deltas.

Everything above this module talks to the small `Engine` protocol, so the HTTP layer can be tested
with a scripted fake engine and the real one is used everywhere else.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol, cast

from llm_ops.protocol.worker import FinishReason
from llm_ops.settings import EngineSettings


@dataclass(frozen=True)
class SamplingOptions:
    """What a request asks of the sampler, independent of vLLM's types."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None


@dataclass(frozen=True)
class Delta:
    """New output since the previous delta of the same request."""

    text: str
    token_count: int
    finish_reason: FinishReason | None  # None while running


class Engine(Protocol):
    max_model_len: int

    def tokenizer(self) -> Any: ...

    def generate(
        self, prompt_token_ids: list[int], options: SamplingOptions, request_id: str
    ) -> AsyncGenerator[Delta, None]:
        """Stream deltas. Closing the iterator early aborts the request in the engine."""
        ...

    async def check_health(self) -> None: ...

    def running_requests(self) -> int:
        """Requests the engine itself still holds: the ground truth for "was it aborted"."""
        ...


class VLLMEngine:
    """`Engine` over vLLM's `AsyncLLM` with delta outputs."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm
        self.max_model_len: int = llm.model_config.max_model_len

    def tokenizer(self) -> Any:
        return self._llm.get_tokenizer()

    async def generate(
        self, prompt_token_ids: list[int], options: SamplingOptions, request_id: str
    ) -> AsyncGenerator[Delta, None]:
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        params = SamplingParams(
            max_tokens=options.max_tokens,
            temperature=options.temperature,
            top_p=options.top_p,
            top_k=options.top_k,
            stop=list(options.stop),
            stop_token_ids=list(options.stop_token_ids),
            repetition_penalty=options.repetition_penalty,
            presence_penalty=options.presence_penalty,
            frequency_penalty=options.frequency_penalty,
            seed=options.seed,
            output_kind=RequestOutputKind.DELTA,
        )
        outputs = self._llm.generate(TokensPrompt(prompt_token_ids=prompt_token_ids), params, request_id)
        # AsyncLLM.generate aborts the request when it is closed or cancelled: close it as soon as we stop.
        async with contextlib.aclosing(outputs):
            async for output in outputs:
                completion = output.outputs[0]
                yield Delta(
                    completion.text, len(completion.token_ids), cast(FinishReason | None, completion.finish_reason)
                )

    async def check_health(self) -> None:
        await self._llm.check_health()

    def running_requests(self) -> int:
        count: int = self._llm.get_num_unfinished_requests()
        return count


def engine_args(settings: EngineSettings, model_path: str, served_name: str) -> dict[str, Any]:
    args: dict[str, Any] = {
        "model": model_path,
        "served_model_name": served_name,
        "dtype": settings.dtype,
        "max_model_len": settings.max_model_len,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "enforce_eager": settings.enforce_eager,
        "quantization": settings.quantization,
    }
    args.update(settings.engine_args)
    return args


@contextlib.asynccontextmanager
async def open_engine(settings: EngineSettings, model_path: str, served_name: str) -> AsyncIterator[VLLMEngine]:
    """Start vLLM's engine (and its engine-core processes); shut it down on exit."""
    # Without this the CPU build reserves most of the machine's memory for KV cache.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_space_gib))
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args(settings, model_path, served_name)))
    try:
        yield VLLMEngine(llm)
    finally:
        llm.shutdown()
