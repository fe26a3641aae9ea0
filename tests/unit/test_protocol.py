"""The request protocol: what is accepted, what is refused, and how turns are read."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from llm_ops.protocol.worker import MAX_STOP_STRINGS, GenerateRequest
from tests.unit.fake_vllm import chat, completion


def refusal(body: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        GenerateRequest.model_validate(body)
    return str(caught.value)


def test_echo_is_off_by_default() -> None:
    assert GenerateRequest.model_validate(chat()).echo is False


@pytest.mark.parametrize("user", ["user", "human"])
@pytest.mark.parametrize("ai", ["ai", "assistant"])
def test_user_and_ai_role_aliases_mean_the_same_turns(user: str, ai: str) -> None:
    request = GenerateRequest.model_validate(
        chat(messages=[{"role": user, "text": "a"}, {"role": ai, "text": "b"}, {"role": user, "text": "c"}])
    )
    assert request.chat_messages() == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]


def test_a_leading_system_turn_and_the_system_message_field_both_become_the_first_openai_message() -> None:
    turn = GenerateRequest.model_validate(
        chat(messages=[{"role": "system", "text": "Be brief."}, {"role": "user", "text": "Hi"}])
    )
    field = GenerateRequest.model_validate(chat(system_message="Be brief.", messages=[{"role": "user", "text": "Hi"}]))
    assert (
        turn.chat_messages()
        == field.chat_messages()
        == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ]
    )


def test_stop_may_be_a_string_or_a_list() -> None:
    assert GenerateRequest.model_validate(chat(stop="\n")).stop_strings() == ["\n"]
    assert GenerateRequest.model_validate(chat(stop=["a", "b"])).stop_strings() == ["a", "b"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (chat(messages=None), "needs a non-empty `messages`"),
        (chat(messages=[]), "needs a non-empty `messages`"),
        (completion(prompt=None), "needs a `prompt`"),
        (chat(prompt="x"), "takes `messages`, not `prompt`"),
        (completion(messages=[{"role": "user", "text": "x"}]), "takes `prompt`, not `messages`"),
        (chat(messages=[{"role": "bob", "text": "x"}]), "'user', 'human', 'ai', 'assistant' or 'system'"),
        (chat(messages=[{"role": "ai", "text": "x"}]), "turn 1 has role 'ai'"),
        (chat(messages=[{"role": "user", "text": "a"}, {"role": "user", "text": "b"}]), "turn 2 has role 'user'"),
        (chat(messages=[{"role": "user", "text": "a"}, {"role": "ai", "text": "b"}]), "last message must be a user"),
        (chat(messages=[{"role": "user", "text": "a"}, {"role": "system", "text": "b"}]), "only be the first"),
        (
            chat(messages=[{"role": "system", "text": "s"}, {"role": "user", "text": "a"}], system_message="t"),
            "not both",
        ),
        (chat(generation_mode="poetry"), "'chat' or 'completion'"),
        (chat(temperature="0.7"), "valid number"),
        (chat(temperature=-0.1), "greater than or equal to 0"),
        (chat(top_p=0), "greater than 0"),
        (chat(top_p=1.5), "less than or equal to 1"),
        (chat(max_new_tokens=0), "greater than or equal to 1"),
        (chat(max_new_tokens=1.5), "valid integer"),
        (chat(temprature=0.5), "Extra inputs are not permitted"),
        ({"generation_mode": "chat", "messages": [{"role": "user", "text": "x"}]}, "model_identifier"),
    ],
)
def test_invalid_requests_are_refused_with_a_reason(body: dict[str, Any], says: str) -> None:
    assert says in refusal(body)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (chat(temperature=2.5), "temperature"),
        (chat(top_k=2**40), "top_k"),
        (chat(max_new_tokens=2**30), "max_new_tokens"),
        (chat(repetition_penalty=11.0), "repetition_penalty"),
        (chat(seed=2**64), "seed"),
        (chat(seed=-(2**64)), "seed"),
        (chat(stop=["x"] * (MAX_STOP_STRINGS + 1)), "stop"),
        (chat(stop="x" * 1001), "stop"),
        (chat(stop_token_ids=[-1]), "stop_token_ids.0"),
        (chat(stop_token_ids=[1] * 65), "stop_token_ids"),
        (chat(messages=[{"role": "user", "text": "x" * 1_000_001}]), "messages.0.text"),
        (
            chat(
                messages=[{"role": "user", "text": "x"}, {"role": "ai", "text": "y"}] * 512
                + [{"role": "user", "text": "z"}]
            ),
            "messages",
        ),
        (chat(system_message="x" * 1_000_001), "system_message"),
        (completion(prompt="x" * 1_000_001), "prompt"),
        (chat(model_identifier="m" * 257), "model_identifier"),
    ],
)
def test_every_number_and_every_list_and_text_has_a_bound(body: dict[str, Any], field: str) -> None:
    assert field in refusal(body)


def test_values_at_the_bounds_are_accepted() -> None:
    GenerateRequest.model_validate(
        chat(
            temperature=2.0,
            seed=2**63 - 1,
            stop=["x"] * MAX_STOP_STRINGS,
            stop_token_ids=[2**31 - 1] * 64,
            max_new_tokens=2**20,
        )
    )
