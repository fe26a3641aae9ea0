"""vLLM's Responses API (OpenAI's) and Anthropic's Messages API through the front door, with the official
`openai` and `anthropic` clients over verified TLS with an API key.

The stack runs two replicas, and vLLM keeps a stored response in the memory of the replica that made it: a
chain of follow-ups naming the previous response, and reads by id, succeed only because the router sends
each to the replica holding it (`llm_ops.router.stored`); without that, about half would reach the other
replica and get vLLM's 404."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from llm_ops.router.stored import tag_in, tag_of
from tests.conftest import pointed_at, readme_curl_examples, run_bash
from tests.integration.conftest import MODEL, Stack

pytestmark = pytest.mark.integration
QUESTION = "What is the capital of France?"
ROUTES = ["", f"/api/{MODEL}"]  # /v1/...: the router picks a replica of the body's model; /api/<model>/v1/...
ROUTE_IDS = ["at /v1", "at /api/<model>/v1"]
FOLLOW_UPS = 6
CITIES = ["London", "Paris", "Tokyo"]
WEATHER = {  # `strict`: vLLM decodes the input to the schema only for a strict tool, as Anthropic and OpenAI do
    "name": "get_weather",
    "strict": True,
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": CITIES}},  # a short answer the grammar bounds
        "required": ["city"],
    },
}


def openai_client(stack: Stack, http: httpx.Client, route: str = "") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}{route}/v1", api_key=stack.api_key, http_client=http, max_retries=0)


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(verify=stack.tls(), timeout=120) as client:
        yield client


@pytest.fixture(params=ROUTES, ids=ROUTE_IDS)
def client(stack: Stack, http: httpx.Client, request: pytest.FixtureRequest) -> openai.OpenAI:
    return openai_client(stack, http, request.param)


@pytest.fixture(params=ROUTES, ids=ROUTE_IDS)
def claude(stack: Stack, request: pytest.FixtureRequest) -> Iterator[anthropic.Anthropic]:
    """The official Anthropic client; the stack's key goes as `Authorization: Bearer` (`auth_token`), as every
    LLM Ops route asks."""
    with anthropic.DefaultHttpxClient(verify=stack.tls(), timeout=120) as http:
        base_url = f"{stack.base_url}{request.param}"
        yield anthropic.Anthropic(base_url=base_url, auth_token=stack.api_key, http_client=http, max_retries=0)


def replica_tags(stack: Stack) -> set[str]:
    """The tag of each replica the router knows, as a response's id carries it."""
    return {tag_of(url) for url in stack.replica_status()}


def test_a_response_answers_whole_with_an_id_naming_a_replica(client: openai.OpenAI, stack: Stack) -> None:
    answer = client.responses.create(model=MODEL, input=QUESTION, temperature=0, max_output_tokens=64)
    assert answer.status == "completed" and "Paris" in answer.output_text
    assert answer.usage is not None and answer.usage.input_tokens > 10 and answer.usage.output_tokens > 0
    assert tag_in(answer.id) in replica_tags(stack)


def test_a_streamed_response_arrives_in_pieces_and_can_be_followed_up(client: openai.OpenAI) -> None:
    stream = client.responses.create(model=MODEL, input=QUESTION, temperature=0, max_output_tokens=64, stream=True)
    events = list(stream)
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    (completed,) = [event.response for event in events if event.type == "response.completed"]
    # The whole text goes through vLLM's output parser (the service's tool parser), the deltas do not: the same
    # words, maybe not the same surrounding whitespace.
    assert len(deltas) > 3 and "".join(deltas).strip() == completed.output_text.strip()
    assert "Paris" in completed.output_text
    follow_up = client.responses.create(
        model=MODEL, previous_response_id=completed.id, input="And of Italy?", temperature=0, max_output_tokens=16
    )
    assert follow_up.status in ("completed", "incomplete") and follow_up.output_text


def test_a_chain_of_follow_ups_reaches_the_replica_holding_each_previous_response(
    stack: Stack, http: httpx.Client
) -> None:
    """Each follow-up names the response before it, at /v1 and at /api/<model>/v1 in turn; each one's prompt holds
    the whole conversation so far, so it grows."""
    clients = [openai_client(stack, http, route) for route in ROUTES]
    response = clients[0].responses.create(
        model=MODEL, input="My name is Ada. Say hello.", temperature=0, max_output_tokens=16
    )
    chain = [response]
    for turn in range(FOLLOW_UPS):
        response = clients[turn % 2].responses.create(
            model=MODEL,
            previous_response_id=response.id,
            input=f"Now say the number {turn}.",
            temperature=0,
            max_output_tokens=16,
        )
        chain.append(response)
    prompts = [response.usage.input_tokens for response in chain if response.usage is not None]
    assert len(prompts) == len(chain) and prompts == sorted(set(prompts))  # every prompt longer than the last
    assert len({tag_in(response.id) for response in chain}) == 1 and tag_in(response.id) in replica_tags(stack)


def test_a_response_is_retrieved_by_its_id_every_time(client: openai.OpenAI) -> None:
    made = client.responses.create(model=MODEL, input=QUESTION, temperature=0, max_output_tokens=64)
    for _ in range(4):  # with two replicas, one of these would reach the other without affinity
        retrieved = client.responses.retrieve(made.id)
        assert retrieved.id == made.id and retrieved.output_text == made.output_text


def test_a_response_id_no_replica_holds_is_an_openai_not_found_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="no replica holds response"):
        client.responses.retrieve("resp_00000000_0123456789abcdef01234567")


# The `anthropic` client (2.x) has no `temperature` argument any more; vLLM's Messages API still takes the field.
GREEDY = {"temperature": 0}


def test_a_message_answers_whole(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL, max_tokens=64, extra_body=GREEDY, messages=[{"role": "user", "content": QUESTION}]
    )
    text = "".join(block.text for block in message.content if block.type == "text")
    assert message.role == "assistant" and message.stop_reason == "end_turn" and "Paris" in text
    assert message.usage.input_tokens > 10 and message.usage.output_tokens > 0


def test_a_streamed_message_arrives_as_anthropics_events(claude: anthropic.Anthropic) -> None:
    stream = claude.messages.create(
        model=MODEL, max_tokens=64, extra_body=GREEDY, messages=[{"role": "user", "content": QUESTION}], stream=True
    )
    events = list(stream)
    text = [
        event.delta.text for event in events if event.type == "content_block_delta" and event.delta.type == "text_delta"
    ]
    stops = [event.delta.stop_reason for event in events if event.type == "message_delta"]
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    assert len(text) > 3 and "Paris" in "".join(text) and stops == ["end_turn"]


FORCED_WEATHER_CALL: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 100,
    "extra_body": GREEDY,
    "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
    "tools": [WEATHER],
    "tool_choice": {"type": "tool", "name": "get_weather"},
}


def test_a_tool_the_model_must_call_comes_back_as_a_tool_use_block(claude: anthropic.Anthropic) -> None:
    """vLLM turns Anthropic's `{"type": "tool", "name": ...}` into OpenAI's named tool choice, and a `strict`
    tool's input is decoded to its schema (the 135M model calls no tool unless forced)."""
    message = claude.messages.create(**FORCED_WEATHER_CALL)
    calls = [block for block in message.content if block.type == "tool_use"]
    assert message.stop_reason == "tool_use" and len(calls) == 1
    assert calls[0].name == "get_weather" and calls[0].id
    assert calls[0].input == {"city": "Paris"}


def test_a_streamed_tool_call_arrives_as_input_json_deltas_that_make_its_input(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(**FORCED_WEATHER_CALL) as stream:
        deltas = [
            event.delta.partial_json
            for event in stream
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta"
        ]
        message = stream.get_final_message()
    calls = [block for block in message.content if block.type == "tool_use"]
    assert len(deltas) > 3 and json.loads("".join(deltas)) == {"city": "Paris"}
    assert message.stop_reason == "tool_use" and len(calls) == 1 and calls[0].input == {"city": "Paris"}


def test_the_readmes_responses_and_messages_curl_examples_work_as_written(stack: Stack) -> None:
    examples = [e for e in readme_curl_examples() if "/v1/responses" in e or "/v1/messages" in e]
    assert len(examples) == 2, examples
    for example in examples:
        answer = json.loads(run_bash(pointed_at(example, stack)))
        text = (
            answer["output"][-1]["content"][0]["text"] if "/v1/responses" in example else answer["content"][0]["text"]
        )
        assert "Paris" in text, answer
