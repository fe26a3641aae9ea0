"""Conversation templates render exactly the prompt the model was trained on.

Every template is checked against an independent reference: FastChat's own template of the same
name, or, where FastChat has none, the model family's published chat template. (vLLM renders them as
Jinja chat templates: tests/unit/test_chat_templates.py proves those render the same.)
"""

from __future__ import annotations

import fastchat.conversation as fastchat
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llm_ops.prompts.conversation import (
    Conversation,
    SeparatorStyle,
    conv_template_names,
    get_conv_template,
    register_conv_template,
)

SYSTEM = "You are a terse assistant."
TURNS = [
    ("user", "Hello!"),
    ("assistant", "Hi. How can I help?"),
    ("user", "Name a prime number."),
    ("assistant", "Seven."),
    ("user", "Another one?"),
]

FASTCHAT_NAMES = ["llama-2", "vicuna_v1.1", "dolly_v2", "falcon", "falcon-chat", "mistral"]

# Meta-Llama-3-8B-Instruct's tokenizer_config.json chat_template, as published.
LLAMA_3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def render(name: str, system: str | None, turns: list[tuple[str, str]]) -> str:
    """A registered template's prompt for a conversation, ready for the model's answer."""
    conv = get_conv_template(name)
    if system is not None:
        conv.set_system_message(system)
    for role, text in turns:
        conv.append_message(conv.roles[0 if role == "user" else 1], text)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def fastchat_prompt(name: str) -> str:
    conv = fastchat.get_conv_template(name)
    conv.set_system_message(SYSTEM)
    for role, text in TURNS:
        conv.append_message(conv.roles[0 if role == "user" else 1], text)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def render_jinja(template: str, **context: object) -> str:
    """Renders a chat template the way transformers' apply_chat_template does."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(**context)


def reference_messages() -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}] + [{"role": r, "content": t} for r, t in TURNS]


def test_every_supported_family_has_a_registered_template() -> None:
    assert set(conv_template_names()) >= {*FASTCHAT_NAMES, "chatml", "llama-3"}


@pytest.mark.parametrize("name", FASTCHAT_NAMES)
def test_template_renders_what_fastchat_renders(name: str) -> None:
    assert render(name, SYSTEM, TURNS) == fastchat_prompt(name)


def test_llama_2_multi_turn_prompt_is_pinned() -> None:
    expected = (
        "[INST] <<SYS>>\nYou are a terse assistant.\n<</SYS>>\n\nHello! [/INST] Hi. How can I help? </s><s>"
        "[INST] Name a prime number. [/INST] Seven. </s><s>[INST] Another one? [/INST]"
    )
    assert render("llama-2", SYSTEM, TURNS) == expected


def test_llama_3_renders_what_metas_chat_template_renders_after_the_bos_token() -> None:
    reference = render_jinja(
        LLAMA_3_CHAT_TEMPLATE,
        messages=reference_messages(),
        bos_token="<|begin_of_text|>",
        add_generation_prompt=True,
    )
    assert "<|begin_of_text|>" + render("llama-3", SYSTEM, TURNS) == reference  # the tokenizer's BOS first
    assert get_conv_template("llama-3").stop_str == "<|eot_id|>"


def test_chatml_renders_what_the_default_models_tokenizer_renders(default_tokenizer: object) -> None:
    reference = default_tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        reference_messages(), tokenize=False, add_generation_prompt=True
    )
    assert render("chatml", SYSTEM, TURNS) == reference


def test_without_a_system_message_the_templates_default_is_kept() -> None:
    vicuna = render("vicuna_v1.1", None, [("user", "Hi")])
    assert vicuna.startswith("A chat between a curious user and an artificial intelligence assistant.")


def test_rendering_does_not_change_the_registered_template() -> None:
    render("llama-2", SYSTEM, TURNS)
    assert get_conv_template("llama-2").messages == []
    assert get_conv_template("llama-2").system_message == ""


def test_registering_a_name_twice_is_an_error_unless_overridden() -> None:
    template = Conversation(
        name="test-duplicate", roles=("Q", "A"), sep_style=SeparatorStyle.ADD_COLON_SINGLE, sep="\n"
    )
    register_conv_template(template)
    with pytest.raises(ValueError, match="already registered"):
        register_conv_template(template)
    register_conv_template(template, override=True)


def test_an_unknown_template_name_lists_the_registered_ones() -> None:
    with pytest.raises(KeyError, match="llama-2"):
        get_conv_template("no-such-template")
