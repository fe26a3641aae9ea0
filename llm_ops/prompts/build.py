"""Request -> the exact prompt text the engine gets, with the stop conditions that go with it.

A deployment renders chats with one of two things, chosen when the worker starts (never by the
client): a registered FastChat conversation template (`--conv-template NAME`), or, when none is
named, the chat template that ships with the model's tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi.encoders import jsonable_encoder

from llm_ops.prompts.conversation import get_conv_template
from llm_ops.protocol.errors import ErrorCode, RequestError
from llm_ops.protocol.worker import GenerateRequest

Turns = list[tuple[str, str]]  # ("user" | "assistant", text)


@dataclass(frozen=True)
class Prompt:
    text: str
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    # Chat templates write the BOS token themselves; plain text needs the tokenizer to add it.
    add_special_tokens: bool = True


class ChatRenderer(Protocol):
    def render(self, system_message: str | None, turns: Turns) -> Prompt: ...

    def describe(self) -> dict[str, Any] | None: ...


class ConvTemplateRenderer:
    """Renders with a registered FastChat `Conversation`."""

    def __init__(self, template_name: str) -> None:
        self.template = get_conv_template(template_name)  # fails fast on an unknown name

    def render(self, system_message: str | None, turns: Turns) -> Prompt:
        conv = self.template.copy()
        if system_message is not None:
            conv.set_system_message(system_message)
        for role, text in turns:
            conv.append_message(conv.roles[0] if role == "user" else conv.roles[1], text)
        conv.append_message(conv.roles[1], None)
        stop = conv.stop_str
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        return Prompt(conv.get_prompt(), stops, list(conv.stop_token_ids or []))

    def describe(self) -> dict[str, Any]:
        """The whole `Conversation`, as FastChat workers send it: FastChat's OpenAI server rebuilds it."""
        described: dict[str, Any] = jsonable_encoder(self.template)
        return described


class TokenizerChatTemplateRenderer:
    """Renders with the chat template of the model's own tokenizer (`apply_chat_template`)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def render(self, system_message: str | None, turns: Turns) -> Prompt:
        if not getattr(self.tokenizer, "chat_template", None):
            raise RequestError(
                ErrorCode.VALIDATION_TYPE_ERROR,
                "this model has no chat template: use generation_mode 'completion', "
                "or start its worker with --conv-template NAME",
            )
        messages = [{"role": "system", "content": system_message}] if system_message is not None else []
        messages += [{"role": role, "content": text} for role, text in turns]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return Prompt(text, add_special_tokens=False)

    def describe(self) -> None:
        return None


def build_prompt(request: GenerateRequest, renderer: ChatRenderer) -> Prompt:
    if request.generation_mode == "completion":
        return Prompt(request.prompt or "")
    system_message, turns = request.chat_turns()
    return renderer.render(system_message, turns)
