"""A scripted stand-in for the vLLM engine, for testing the HTTP layer without a model."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

from llm_ops.engine import Delta, SamplingOptions
from llm_ops.prompts.build import ConvTemplateRenderer
from llm_ops.worker.admission import Admission
from llm_ops.worker.service import WorkerService


class WordTokenizer:
    """One token per whitespace-separated word."""

    chat_template = None

    def __len__(self) -> int:
        return 1000  # the vocabulary's size

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [len(word) for word in text.split()]


@dataclass
class FakeEngine:
    """Answers every prompt with `words`, one delta per word, `delay` seconds apart."""

    words: list[str] = field(default_factory=lambda: ["The", " capital", " is", " Paris", "."])
    delay: float = 0.0
    max_model_len: int = 64
    fail_after: int | None = None
    fail_seed: int | None = None  # requests with this seed fail after their first word
    started: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    seen_options: list[SamplingOptions] = field(default_factory=list)

    def tokenizer(self) -> WordTokenizer:
        return WordTokenizer()

    async def generate(
        self, prompt_token_ids: list[int], options: SamplingOptions, request_id: str
    ) -> AsyncGenerator[Delta, None]:
        self.started.append(request_id)
        self.seen_options.append(options)
        words = self.words[: options.max_tokens]
        done = False
        try:
            for index, word in enumerate(words):
                seeded_to_fail = self.fail_seed is not None and options.seed == self.fail_seed
                fails_here = 1 if seeded_to_fail else self.fail_after
                if fails_here is not None and index == fails_here:
                    raise RuntimeError("simulated engine failure")
                await asyncio.sleep(self.delay)
                last = index == len(words) - 1
                reason = None if not last else ("length" if len(words) == options.max_tokens else "stop")
                yield Delta(word, 1, reason)
            done = True
        finally:
            (self.finished if done else self.aborted).append(request_id)

    async def check_health(self) -> None:
        return None

    def running_requests(self) -> int:
        return len(self.started) - len(self.finished) - len(self.aborted)


def fake_service(
    engine: FakeEngine, names: list[str] | None = None, admission: Admission | None = None
) -> WorkerService:
    return WorkerService(engine, names or ["fake-model", "fake.model-1.5"], ConvTemplateRenderer("chatml"), admission)


@contextlib.asynccontextmanager
async def open_fake_service(engine: FakeEngine, admission: Admission | None = None) -> AsyncIterator[WorkerService]:
    yield fake_service(engine, admission=admission)
