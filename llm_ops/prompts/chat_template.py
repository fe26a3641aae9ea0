"""Jinja chat templates that render exactly what FastChat conversation templates render.

A worker started with `--conv-template NAME` renders chats with FastChat's `Conversation.get_prompt`,
while vLLM's OpenAI server renders `/v1/chat/completions` with a Jinja chat template (the Hugging Face
`apply_chat_template` convention: `messages`, `add_generation_prompt`, ...). Both APIs must give the
model the same prompt, so `jinja_chat_template` writes, for a `Conversation`, the Jinja template that
renders it byte for byte: an optional first system message, then user/assistant turns, then (with
`add_generation_prompt`) the assistant's empty turn, following `get_prompt`'s rules for the template's
separator style, quirks included.

`matching_conv_template` goes the other way: for a worker that renders with its tokenizer's own chat
template, it finds the registered `Conversation` that renders the same prompts, so FastChat clients
can still be told which template the worker uses.

vLLM tokenizes a rendered chat without adding special tokens: the template itself starts with the
tokenizer's BOS token (`bos=True`) when the model's tokenizer would add one to a plain prompt (Llama,
Mistral, Vicuna), as the models' own chat templates do; FastChat's templates leave it to the tokenizer.

Every literal (separators, roles, the default system message) is written as a JSON string literal,
which Jinja reads with the same escapes, and every tag strips the whitespace around it, so the
template renders the same with or without `trim_blocks`/`lstrip_blocks`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from string import Formatter
from typing import Any

from llm_ops.prompts.conversation import (
    Conversation,
    SeparatorStyle,
    conv_template_names,
    fastchat_prompt,
    get_conv_template,
)

__all__ = ["jinja_chat_template", "matching_conv_template", "render_chat"]

Messages = list[dict[str, str]]

# The probe chats that tell templates apart: this system message (or none), then turns from these.
_PROBE_SYSTEM = "You answer in one word."
_PROBE_TURNS = ["Hello!", "Hi.", "Name a prime number.", "Seven.", "Another one?"]


def jinja_chat_template(conv: Conversation, bos: bool = False) -> str:
    """The Jinja chat template that renders `conv`'s prompts exactly as `conv.get_prompt()` does, after the
    tokenizer's `bos_token` when `bos`."""
    head, body = _style_parts(conv)
    return "\n".join(
        [
            "{{- bos_token -}}" if bos else "{#- the tokenizer adds no BOS token -#}",
            "{%- if messages and messages[0]['role'] == 'system' -%}",
            "  {%- set system_message = messages[0]['content'] -%}",
            "  {%- set turns = messages[1:] -%}",
            "{%- else -%}",
            f"  {{%- set system_message = {_literal(conv.system_message)} -%}}",
            "  {%- set turns = messages -%}",
            "{%- endif -%}",
            "{%- if add_generation_prompt -%}",  # FastChat's `append_message(roles[1], None)`
            "  {%- set turns = turns + [{'role': 'assistant', 'content': none}] -%}",
            "{%- endif -%}",
            f"{{%- set system_prompt = {_system_prompt_expression(conv.system_template)} -%}}",
            head,
            "{%- for message in turns -%}",
            "  {%- set content = message['content'] -%}",
            _role_assignment(conv),
            f"  {body}",
            "{%- endfor -%}",
        ]
    )


def render_chat(tokenizer: Any, chat_template: str | None, messages: Messages) -> str:
    """The prompt vLLM renders for `messages`: `chat_template` (the tokenizer's own when None), with the
    generation prompt."""
    prompt = tokenizer.apply_chat_template(
        messages, chat_template=chat_template, add_generation_prompt=True, tokenize=False
    )
    return str(prompt)


def matching_conv_template(render: Callable[[Messages], str]) -> str | None:
    """The first registered template whose FastChat prompts equal `render`'s for the probe chats, else None.

    `render` renders a message list with a tokenizer's chat template (with `add_generation_prompt`).
    A probe it refuses (raises on) cannot be matched, so no template matches then.
    """
    probes = _probe_conversations()
    try:
        expected = [render(messages) for messages in probes]
    except Exception:  # e.g. a chat template that rejects system messages: no FastChat template renders that
        return None
    for name in conv_template_names():
        conv = get_conv_template(name)
        if all(fastchat_prompt(conv, messages) == text for messages, text in zip(probes, expected, strict=True)):
            return name
    return None


def _literal(text: str) -> str:
    """A Jinja string literal for `text`: Jinja decodes JSON's escapes; raw non-ASCII survives as is."""
    return json.dumps(text, ensure_ascii=False)


def _system_prompt_expression(system_template: str) -> str:
    """`system_template.format(system_message=...)` as a Jinja expression."""
    parts: list[str] = []
    for literal, field, spec, conversion in Formatter().parse(system_template):
        if literal:
            parts.append(_literal(literal))
        if field is None:
            continue
        if field != "system_message" or spec or conversion:
            raise ValueError(f"system_template field {{{field}}} is not supported: only {{system_message}} is")
        parts.append("system_message")
    return " ~ ".join(parts) or '""'


def _role_assignment(conv: Conversation) -> str:
    user, assistant = (_literal(role) for role in conv.roles)
    return (
        f"  {{%- if message['role'] == 'user' -%}}{{%- set role = {user} -%}}"
        f"{{%- elif message['role'] == 'assistant' -%}}{{%- set role = {assistant} -%}}"
        "{%- else -%}{{- raise_exception('after an optional first system message, "
        "only user and assistant messages are supported') -}}{%- endif -%}"
    )


def _seps(conv: Conversation) -> str:
    """`[sep, sep2][i % 2]` for the message at index i."""
    if conv.sep2 is None:
        raise ValueError(f"conversation template {conv.name!r} ({conv.sep_style.name}) needs sep2")
    return f"[{_literal(conv.sep)}, {_literal(conv.sep2)}][loop.index0 % 2]"


def _message(with_content: str, without: str) -> str:
    """FastChat renders a message only if it is truthy: None (the generation prompt) and "" render as `without`."""
    return f"{{%- if content -%}}{{{{- {with_content} -}}}}{{%- else -%}}{{{{- {without} -}}}}{{%- endif -%}}"


def _style_parts(conv: Conversation) -> tuple[str, str]:
    """The template's head (what comes before the messages) and its body (one message) for `conv`'s style."""
    sep = _literal(conv.sep)
    style = conv.sep_style
    if style == SeparatorStyle.ADD_COLON_TWO:
        return "{{- system_prompt ~ " + sep + " -}}", _message(f'role ~ ": " ~ content ~ {_seps(conv)}', 'role ~ ":"')
    if style == SeparatorStyle.ADD_NEW_LINE_SINGLE:
        head = "{%- if system_prompt -%}{{- system_prompt ~ " + sep + " -}}{%- endif -%}"
        return head, _message(f'role ~ "\\n" ~ content ~ {sep}', 'role ~ "\\n"')
    if style == SeparatorStyle.CHATML:
        head = "{%- if system_prompt -%}{{- system_prompt ~ " + sep + ' ~ "\\n" -}}{%- endif -%}'
        return head, _message(f'role ~ "\\n" ~ content ~ {sep} ~ "\\n"', 'role ~ "\\n"')
    if style == SeparatorStyle.FALCON_CHAT:
        head = "{%- if system_message -%}{{- system_prompt ~ " + sep + " -}}{%- endif -%}"
        return head, _message(f'role ~ ": " ~ content ~ {sep}', 'role ~ ":"')
    if style == SeparatorStyle.RWKV:
        cleaned = '(content | replace("\\r\\n", "\\n") | replace("\\n\\n", "\\n"))'
        return "{{- system_prompt -}}", _message(f'role ~ ": " ~ {cleaned} ~ "\\n\\n"', 'role ~ ":"')
    if style == SeparatorStyle.DOLLY:
        after = '("\\n\\n" if loop.index0 % 2 == 1 else "")'
        return "{{- system_prompt -}}", _message(f'role ~ ":\\n" ~ content ~ {_seps(conv)} ~ {after}', 'role ~ ":\\n"')
    if style == SeparatorStyle.LLAMA2:
        return _llama2_parts(conv)
    raise ValueError(f"separator style {style.name} of conversation template {conv.name!r} has no Jinja equivalent")


def _llama2_parts(conv: Conversation) -> tuple[str, str]:
    """LLAMA2: "[INST] " without a system message; the first user message has no role tag, roles go by index."""
    head = '{%- if system_message -%}{{- system_prompt -}}{%- else -%}{{- "[INST] " -}}{%- endif -%}'
    tag = f"[{_literal(conv.roles[0])}, {_literal(conv.roles[1])}][loop.index0 % 2]"
    with_content = f'(content ~ " ") if loop.index0 == 0 else ({tag} ~ " " ~ content ~ {_seps(conv)})'
    return head, _message(with_content, tag)


def _probe_conversations() -> list[Messages]:
    """One and three user turns, each with and without a system message."""
    chats: list[Messages] = []
    for turns in (_PROBE_TURNS[:1], _PROBE_TURNS):
        messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i, text in enumerate(turns)]
        chats += [messages, [{"role": "system", "content": _PROBE_SYSTEM}, *messages]]
    return chats
