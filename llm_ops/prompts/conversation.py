"""Conversation templates, FastChat style.

`Conversation` and `SeparatorStyle` are FastChat's own (`fastchat.conversation`): the rendering
rules are not rewritten here. This module keeps LLM Ops' registry of templates, the ones a
deployment may name with `--conv-template`. To support a new chat model, register its template
below (see README, "Adding a model").
"""

from __future__ import annotations

from fastchat.conversation import Conversation, SeparatorStyle

__all__ = [
    "Conversation",
    "SeparatorStyle",
    "register_conv_template",
    "get_conv_template",
    "conv_template_names",
    "fastchat_prompt",
]

_templates: dict[str, Conversation] = {}


def register_conv_template(template: Conversation, override: bool = False) -> None:
    if template.name in _templates and not override:
        raise ValueError(f"conversation template {template.name!r} is already registered")
    _templates[template.name] = template


def get_conv_template(name: str) -> Conversation:
    """A fresh copy of a registered template, ready for messages."""
    try:
        return _templates[name].copy()
    except KeyError:
        known = ", ".join(sorted(_templates))
        raise KeyError(f"unknown conversation template {name!r}; registered: {known}") from None


def conv_template_names() -> list[str]:
    return sorted(_templates)


def fastchat_prompt(template: Conversation, messages: list[dict[str, str]]) -> str:
    """What FastChat renders for OpenAI-style `messages` (an optional system message first, then user and
    assistant turns), ready for the assistant's answer; the template's own system message unless given."""
    conv = template.copy()
    if messages and messages[0]["role"] == "system":
        conv.set_system_message(messages[0]["content"])
        messages = messages[1:]
    for message in messages:
        conv.append_message(conv.roles[0] if message["role"] == "user" else conv.roles[1], message["content"])
    conv.append_message(conv.roles[1], None)
    prompt: str = conv.get_prompt()
    return prompt


# Llama-2 chat
register_conv_template(
    Conversation(
        name="llama-2",
        system_template="[INST] <<SYS>>\n{system_message}\n<</SYS>>\n\n",
        roles=("[INST]", "[/INST]"),
        sep_style=SeparatorStyle.LLAMA2,
        sep=" ",
        sep2=" </s><s>",
    )
)

# Vicuna v1.1 (and v1.3, v1.5)
register_conv_template(
    Conversation(
        name="vicuna_v1.1",
        system_message="A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.",
        roles=("USER", "ASSISTANT"),
        sep_style=SeparatorStyle.ADD_COLON_TWO,
        sep=" ",
        sep2="</s>",
    )
)

# Dolly V2
register_conv_template(
    Conversation(
        name="dolly_v2",
        system_message="Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n",
        roles=("### Instruction", "### Response"),
        sep_style=SeparatorStyle.DOLLY,
        sep="\n\n",
        sep2="### End",
    )
)

# Falcon (7B/40B instruct)
register_conv_template(
    Conversation(
        name="falcon",
        roles=("User", "Assistant"),
        messages=[],
        sep_style=SeparatorStyle.RWKV,
        sep="\n",
        sep2="<|endoftext|>",
        stop_str="\nUser",
        # Falcon's special tokens (>>TITLE<<, >>ABSTRACT<<, ...): generation stops at any of them.
        stop_token_ids=list(range(12)),
    )
)

# Falcon-180B chat
register_conv_template(
    Conversation(
        name="falcon-chat",
        roles=("User", "Falcon"),
        system_template="System: {system_message}",
        messages=[],
        sep_style=SeparatorStyle.FALCON_CHAT,
        sep="\n",
        sep2="<|endoftext|>",
        stop_str="\nUser:",
    )
)

# Mistral-7B-Instruct v0.1
register_conv_template(
    Conversation(
        name="mistral",
        system_template="[INST] {system_message}\n",
        roles=("[INST]", "[/INST]"),
        sep_style=SeparatorStyle.LLAMA2,
        sep=" ",
        sep2="</s>",
    )
)

# ChatML: Qwen, OpenHermes, ... (SmolLM2: see "smollm2", its default system message differs)
register_conv_template(
    Conversation(
        name="chatml",
        system_template="<|im_start|>system\n{system_message}",
        system_message="You are a helpful assistant.",
        roles=("<|im_start|>user", "<|im_start|>assistant"),
        sep_style=SeparatorStyle.CHATML,
        sep="<|im_end|>",
        stop_str="<|im_end|>",
    )
)

# SmolLM2-Instruct: ChatML with the default system message of its tokenizer's chat template (which
# writes that system message only when the chat has none of its own).
register_conv_template(
    Conversation(
        name="smollm2",
        system_template="<|im_start|>system\n{system_message}",
        system_message="You are a helpful AI assistant named SmolLM, trained by Hugging Face",
        roles=("<|im_start|>user", "<|im_start|>assistant"),
        sep_style=SeparatorStyle.CHATML,
        sep="<|im_end|>",
        stop_str="<|im_end|>",
    )
)

# Llama-3 instruct. The tokenizer adds <|begin_of_text|> itself, so the template leaves it out.
register_conv_template(
    Conversation(
        name="llama-3",
        system_template="<|start_header_id|>system<|end_header_id|>\n\n{system_message}",
        roles=("<|start_header_id|>user<|end_header_id|>\n", "<|start_header_id|>assistant<|end_header_id|>\n"),
        sep_style=SeparatorStyle.ADD_NEW_LINE_SINGLE,
        sep="<|eot_id|>",
        stop_str="<|eot_id|>",
        stop_token_ids=[128001, 128009],  # <|end_of_text|>, <|eot_id|>
    )
)
