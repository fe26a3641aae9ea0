"""The Jinja chat template of a conversation template renders byte for byte what FastChat renders.

vLLM's OpenAI server renders chats with a Jinja chat template, the way transformers'
`apply_chat_template` does; a worker started with `--conv-template NAME` renders them with FastChat.
The reference here is FastChat's own `Conversation.get_prompt`, and the Jinja side is rendered by
transformers' own helper (the environment apply_chat_template uses).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers.utils.chat_template_utils import render_jinja_template

from llm_ops.models.default import FOLDER_NAME
from llm_ops.models.packaged import default_cache_dir
from llm_ops.prompts.chat_template import jinja_chat_template, matching_conv_template
from llm_ops.prompts.conversation import Conversation, SeparatorStyle, conv_template_names, get_conv_template
from llm_ops.prompts.conversation import fastchat_prompt as render_conversation

Messages = list[dict[str, str]]

# SmolLM2-135M-Instruct's chat template, as its tokenizer (and the packaged GGUF's metadata) has it.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Zephyr's chat template: no registered template renders like it.
ZEPHYR_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


THREE_TURNS = [
    user("Hello!"),
    assistant("Hi. How can I help?"),
    user("Name a prime."),
    assistant("Seven."),
    user("More?"),
]

CONVERSATIONS: dict[str, Messages] = {
    "one turn": [user("Hello!")],
    "three turns": THREE_TURNS,
    "a system message": [system("You are a terse assistant."), *THREE_TURNS],
    "a system message with quotes, newlines and braces": [
        system("Say \"hi\" and 'bye'.\nNew line\r\n\n{system_message} {{ not a tag }} {% raw %} {# #} \\n"),
        user("Hello!"),
    ],
    "an empty system message": [system(""), user("Hello!"), assistant("Hi."), user("Bye.")],
    "messages with Jinja syntax, quotes and newlines": [
        user("{{ messages }} {% if true %}yes{% endif %} %} }} \"double\" 'single'\n\nTwo\r\nCRLF\n\n\n\nfour"),
        assistant("Backslash \\ tab\t {#comment#} {%- raw -%} \\u0041 é 😀\n"),
        user("\n  leading and trailing whitespace  \n"),
    ],
    "an empty assistant message": [user("Hello!"), assistant(""), user("Still there?")],
}


def fastchat_prompt(name: str, messages: Messages) -> str:
    """What FastChat renders: the conversation's default system message unless the chat brings one."""
    return render_conversation(get_conv_template(name), messages)


def render_chat_template(template: str, messages: Messages, add_generation_prompt: bool = True) -> str:
    """Renders as transformers' apply_chat_template does, with the special tokens vLLM passes."""
    rendered: Any = render_jinja_template(  # (rendered chats, generation indices)
        [messages],
        chat_template=template,
        add_generation_prompt=add_generation_prompt,
        bos_token="<s>",
        eos_token="</s>",
    )
    return str(rendered[0][0])


def renderer(template: str) -> Callable[[Messages], str]:
    return lambda messages: render_chat_template(template, messages)


def smollm2_chat_template() -> str:
    """The cached SmolLM2 folder's template (a file of its own, or in tokenizer_config.json), else the copy above."""
    folder = default_cache_dir() / FOLDER_NAME
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        if isinstance(template, str):
            return template
    return SMOLLM2_CHAT_TEMPLATE


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("name", conv_template_names())
def test_the_jinja_template_renders_exactly_what_fastchat_renders(name: str, conversation: str) -> None:
    messages = CONVERSATIONS[conversation]
    template = jinja_chat_template(get_conv_template(name))
    assert render_chat_template(template, messages) == fastchat_prompt(name, messages)


@pytest.mark.parametrize("name", conv_template_names())
def test_without_a_system_message_the_templates_default_is_baked_in(name: str) -> None:
    default = get_conv_template(name).system_message
    rendered = render_chat_template(jinja_chat_template(get_conv_template(name)), [user("Hi")])
    assert default in rendered


@pytest.mark.parametrize("name", conv_template_names())
def test_the_template_renders_the_same_without_transformers_whitespace_options(name: str) -> None:
    messages = CONVERSATIONS["a system message with quotes, newlines and braces"] + [assistant("Hi."), user("x")]
    template = jinja_chat_template(get_conv_template(name))
    plain = ImmutableSandboxedEnvironment().from_string(template).render(messages=messages, add_generation_prompt=True)
    assert plain == fastchat_prompt(name, messages)


@pytest.mark.parametrize("name", conv_template_names())
def test_without_add_generation_prompt_the_prompt_stops_before_the_assistants_turn(name: str) -> None:
    template = jinja_chat_template(get_conv_template(name))
    with_prompt = render_chat_template(template, THREE_TURNS)
    without = render_chat_template(template, THREE_TURNS, add_generation_prompt=False)
    assert with_prompt.startswith(without)
    assert len(without) < len(with_prompt)


def test_a_system_message_after_the_first_message_is_refused() -> None:
    template = jinja_chat_template(get_conv_template("chatml"))
    with pytest.raises(Exception, match="only user and assistant messages"):
        render_chat_template(template, [user("Hi"), system("late")])


def test_an_unsupported_separator_style_is_a_value_error_naming_it() -> None:
    conv = Conversation(name="glm", roles=("问", "答"), sep_style=SeparatorStyle.CHATGLM, sep="\n")
    with pytest.raises(ValueError, match="CHATGLM"):
        jinja_chat_template(conv)


def test_a_system_template_field_other_than_system_message_is_a_value_error() -> None:
    conv = Conversation(name="odd", system_template="{system}", sep_style=SeparatorStyle.CHATML, sep="\n")
    with pytest.raises(ValueError, match="system"):
        jinja_chat_template(conv)


def test_literals_with_braces_quotes_and_non_ascii_survive_in_the_template() -> None:
    conv = Conversation(
        name="literals",
        system_template="{{literal}} 'é' {system_message} }}\\",
        system_message='default "one" 😀 {{ x }} {% y %} {# z #}\r\n',
        roles=("Ü's {%", 'A}} "'),
        sep_style=SeparatorStyle.ADD_COLON_TWO,
        sep="\n{#",
        sep2="</s>\t😀",
    )
    messages = [user("Hi"), assistant("Hello"), user("Bye")]
    expected = conv.copy()
    for message in messages:
        expected.append_message(conv.roles[0] if message["role"] == "user" else conv.roles[1], message["content"])
    expected.append_message(conv.roles[1], None)
    assert render_chat_template(jinja_chat_template(conv), messages) == expected.get_prompt()


@pytest.mark.parametrize("conversation", [name for name in CONVERSATIONS if name != "an empty assistant message"])
def test_smollm2_renders_what_smollm2s_own_chat_template_renders(conversation: str) -> None:
    # An empty message is the one exception: FastChat renders it like the open assistant turn, without a separator.
    messages = CONVERSATIONS[conversation]
    assert fastchat_prompt("smollm2", messages) == render_chat_template(smollm2_chat_template(), messages)


def test_the_copied_smollm2_chat_template_is_the_tokenizers() -> None:
    assert smollm2_chat_template() == SMOLLM2_CHAT_TEMPLATE


def test_matching_finds_smollm2_for_the_smollm2_tokenizers_chat_template() -> None:
    assert matching_conv_template(renderer(smollm2_chat_template())) == "smollm2"


@pytest.mark.parametrize("name", conv_template_names())
def test_matching_finds_every_template_from_its_own_jinja_template(name: str) -> None:
    template = jinja_chat_template(get_conv_template(name))
    assert matching_conv_template(renderer(template)) == name


def test_matching_finds_none_for_a_chat_template_no_registered_template_renders() -> None:
    assert matching_conv_template(renderer(ZEPHYR_CHAT_TEMPLATE)) is None


def test_matching_finds_none_for_a_chat_template_that_refuses_system_messages() -> None:
    refusing = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system messages') }}{% endif %}"
        + SMOLLM2_CHAT_TEMPLATE
    )
    assert matching_conv_template(renderer(refusing)) is None


def test_with_bos_the_template_starts_with_the_tokenizers_bos_token_then_renders_as_fastchat() -> None:
    messages = [user("Hello!"), assistant("Hi."), user("Name a prime number.")]
    for name in conv_template_names():
        conv = get_conv_template(name)
        assert render_chat_template(jinja_chat_template(conv, bos=True), messages) == "<s>" + fastchat_prompt(
            name, messages
        )
