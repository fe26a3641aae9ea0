"""The worker's request and response bodies: FastChat's worker protocol, typed.

A request is checked completely here, before any prompt is built: a field of the wrong type, a
value out of range, a chat without messages or a turn order no template can render is refused
with a message that says which field is wrong and why.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

USER_ROLES = frozenset({"user", "human"})
ASSISTANT_ROLES = frozenset({"ai", "assistant"})
SYSTEM_ROLE = "system"

Role = Literal["user", "human", "ai", "assistant", "system"]
OPENAI_ROLES: dict[str, str] = {
    "user": "user",
    "human": "user",
    "ai": "assistant",
    "assistant": "assistant",
    "system": "system",
}
FinishReason = Literal["stop", "length", "abort", "error"]

# Bounds on what one request may ask for (the body as a whole: --max-body-bytes). The context
# length of the model bounds prompt and answer further, per request, in the worker.
MAX_MESSAGES = 1024
MAX_TEXT_CHARS = 1_000_000  # one message, prompt or system message
MAX_NEW_TOKENS = 1_048_576
MAX_STOP_STRINGS = 4  # vLLM's bound, and OpenAI's
MAX_STOP_CHARS = 1000
MAX_STOP_TOKEN_IDS = 64
MAX_TOKEN_ID = 2**31 - 1
SEED_RANGE = {"ge": -(2**63), "le": 2**63 - 1}  # what the engine's random generators take
MAX_NAME_CHARS = 256
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's bound on one embeddings request

Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS)]
StopStrings = StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)]
Seed = Annotated[int, Field(**SEED_RANGE)]
TokenId = Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]


class StrictModel(BaseModel):
    """No type coercion ("0.7" is not a number) and no unknown fields (a typo is an error)."""

    model_config = ConfigDict(strict=True, extra="forbid")


class ChatMessage(StrictModel):
    role: Role = Field(description="user/human, ai/assistant, or system")
    text: Text


class SamplingFields(StrictModel):
    temperature: Annotated[float, Field(ge=0, le=2, description="0 means greedy")] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    top_k: Annotated[int, Field(ge=-1, le=MAX_TOKEN_ID, description="-1 or 0: consider all tokens")] = -1
    max_new_tokens: Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS)] = 256
    stop: StopStrings | None = None
    stop_token_ids: Annotated[list[TokenId], Field(max_length=MAX_STOP_TOKEN_IDS)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] = 1.0
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    seed: Seed | None = None
    echo: bool = Field(False, description="return the prompt followed by the generated text")

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class GenerateRequest(SamplingFields):
    """Body of `worker_generate` and `worker_generate_stream`."""

    model_identifier: str = Field(max_length=MAX_NAME_CHARS, description="a model name this worker serves")
    generation_mode: Literal["chat", "completion"]
    messages: list[ChatMessage] | None = Field(None, max_length=MAX_MESSAGES, description="chat mode: the conversation")
    system_message: Text | None = Field(
        None, description="chat mode: replaces the template's system message; completion mode ignores it"
    )
    prompt: Text | None = Field(None, description="completion mode: the text to continue, sent as is")
    stream_text: Literal["cumulative", "delta"] = Field(
        "cumulative",
        description="worker_generate_stream only: each chunk's text is the whole text so far (FastChat's format) "
        "or only what is new since the previous chunk (bytes grow with the answer, not with its square)",
    )

    @model_validator(mode="after")
    def _check_mode(self) -> GenerateRequest:
        if self.generation_mode == "chat":
            if self.prompt is not None:
                raise ValueError("chat mode takes `messages`, not `prompt` (use generation_mode 'completion')")
            if not self.messages:
                raise ValueError("chat mode needs a non-empty `messages` list")
            check_turn_order(self.messages, self.system_message)
        else:
            if self.messages is not None:
                raise ValueError("completion mode takes `prompt`, not `messages` (use generation_mode 'chat')")
            if self.prompt is None:
                raise ValueError("completion mode needs a `prompt` string")
        return self

    def chat_messages(self) -> list[dict[str, str]]:
        """The conversation as OpenAI's messages: the system message first, if any, then user and assistant."""
        system = [{"role": "system", "content": self.system_message}] if self.system_message is not None else []
        return system + [
            {"role": OPENAI_ROLES[message.role], "content": message.text} for message in self.messages or []
        ]


def check_turn_order(messages: list[ChatMessage], system_message: str | None) -> None:
    """Templates render turns by position, so the order must be system?, user, ai, user, ..., user."""
    turns = list(messages)
    if turns[0].role == SYSTEM_ROLE:
        if system_message is not None:
            raise ValueError("give the system message either as `system_message` or as a system turn, not both")
        turns = turns[1:]
    for index, message in enumerate(turns):
        if message.role == SYSTEM_ROLE:
            raise ValueError("a system turn may only be the first message")
        expected = USER_ROLES if index % 2 == 0 else ASSISTANT_ROLES
        if message.role not in expected:
            who = "user (user/human)" if index % 2 == 0 else "ai (ai/assistant)"
            raise ValueError(
                f"messages must alternate user and ai turns, starting with the user: "
                f"turn {index + 1} has role {message.role!r} where a {who} turn belongs"
            )
    if not turns or turns[-1].role not in USER_ROLES:
        raise ValueError("the last message must be a user turn: it is the one the model answers")


class FastChatGenerateParams(SamplingFields):
    """The body FastChat's own components send to a worker (its OpenAI-compatible server, ...): a prompt
    they rendered themselves, under `model`. Fields FastChat adds across versions (logprobs, images,
    best_of, ...) are ignored; the sampling fields are bounded as in `GenerateRequest`."""

    model_config = ConfigDict(strict=False, extra="ignore")

    model: Annotated[str, Field(max_length=MAX_NAME_CHARS)]
    prompt: Text
    echo: bool = True  # FastChat workers echo the prompt unless told not to

    def as_request(self) -> GenerateRequest:
        fields = self.model_dump(exclude={"model", "echo"}, exclude_unset=True)
        return GenerateRequest(model_identifier=self.model, generation_mode="completion", echo=self.echo, **fields)


def _body_format(body: object) -> str:
    is_fastchat = isinstance(body, dict) and "model_identifier" not in body and "model" in body
    return FASTCHAT_FORMAT if is_fastchat else LLM_OPS_FORMAT


LLM_OPS_FORMAT, FASTCHAT_FORMAT = "llm-ops", "fastchat"
# What `worker_generate` and `worker_generate_stream` accept: our format, or FastChat's when a body
# has `model` and no `model_identifier`. Errors name the fields of the format the body is in.
WorkerGenerateBody = Annotated[
    Annotated[GenerateRequest, Tag(LLM_OPS_FORMAT)] | Annotated[FastChatGenerateParams, Tag(FASTCHAT_FORMAT)],
    Discriminator(_body_format),
]


def as_generate_request(body: GenerateRequest | FastChatGenerateParams) -> GenerateRequest:
    return body if isinstance(body, GenerateRequest) else body.as_request()


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class GenerateChunk(BaseModel):
    """One chunk of `worker_generate_stream` (text so far, or new text with `stream_text: delta`) and the
    body of `worker_generate`."""

    text: str
    error_code: int = 0
    usage: Usage
    finish_reason: FinishReason | None = None


class WorkerStatus(BaseModel):
    model_names: list[str]
    speed: int = 1
    queue_length: int


class CountTokenRequest(StrictModel):
    prompt: Text
    model: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None  # FastChat's OpenAI server sends it


class CountTokenResponse(BaseModel):
    count: int
    error_code: int = 0


class EmbeddingsRequest(StrictModel):
    """`worker_get_embeddings`: what FastChat's OpenAI server sends a worker (texts; it decodes token ids itself)."""

    model: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None
    input: Annotated[list[Text], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)] | Text
    encoding_format: Literal["float", "base64"] | None = Field(
        None, description="base64: each vector as the base64 of its float32 values; unset: float"
    )


class EmbeddingsResponse(BaseModel):
    """One vector per input, in order, and the tokens they took."""

    embedding: list[list[float]] | list[str]
    token_num: int
    error_code: int = 0


class ConvTemplateResponse(BaseModel):
    conv: dict[str, object] | None = Field(description="FastChat's Conversation.dict(), or null for a chat template")


class ModelDetails(BaseModel):
    context_length: int
