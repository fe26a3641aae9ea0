"""Policy `prefix` (`llm_ops.router.prefix`): a request goes to the replica that was sent the longest prefix
of its prompt, whichever API it came through, unless loads are out of balance."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm_ops.router import prefix
from llm_ops.router.policy import RoutedRequest
from llm_ops.router.prefix import CHUNK_CHARS, Prefix, SentPrefixes, chunk_hashes, prompt_text
from llm_ops.router.replicas import Load, Replica

pytestmark = pytest.mark.anyio
DOCUMENT = "Chapter one. " * 200  # about 10 chunks
OTHER_DOCUMENT = "Another story entirely. " * 120
HISTORY = [
    ("system", DOCUMENT),
    ("user", "Who is in it?"),
    ("assistant", "A dragon who sings. " * 40),
    ("user", "Where?"),
]


def replica(name: str, in_flight: int = 0, capacity: int = 64) -> Replica:
    return Replica(f"http://{name}", frozenset({"m"}), in_flight=in_flight, load=Load(capacity=capacity), admitted=True)


def routed(path: str, document: dict[str, Any]) -> RoutedRequest:
    return RoutedRequest("m", path, json.dumps({"model": "m"} | document).encode())


def openai_chat(history: list[tuple[str, str]]) -> RoutedRequest:
    return routed("/v1/chat/completions", {"messages": [{"role": r, "content": t} for r, t in history]})


def fastchat_chat(history: list[tuple[str, str]]) -> RoutedRequest:
    roles = {"user": "human", "assistant": "ai"}
    system = [text for role, text in history if role == "system"]
    messages = [{"role": roles[role], "text": text} for role, text in history if role != "system"]
    body = {"generation_mode": "chat", "messages": messages} | ({"system_message": system[0]} if system else {})
    return routed("/api/worker_generate_stream", body)


def anthropic_message(history: list[tuple[str, str]]) -> RoutedRequest:
    system = [text for role, text in history if role == "system"]
    blocks = [{"role": r, "content": [{"type": "text", "text": t}]} for r, t in history if r != "system"]
    return routed("/v1/messages", {"system": system[0], "messages": blocks, "max_tokens": 8})


def response(history: list[tuple[str, str]]) -> RoutedRequest:
    system = [text for role, text in history if role == "system"]
    turns = [{"role": role, "content": text} for role, text in history if role != "system"]
    return routed("/v1/responses", {"instructions": system[0], "input": turns})


def test_a_fastchat_chat_an_openai_chat_an_anthropic_message_and_a_response_with_one_history_have_one_prompt() -> None:
    texts = {prompt_text(build(HISTORY)) for build in (openai_chat, fastchat_chat, anthropic_message, response)}
    assert len(texts) == 1 and DOCUMENT in texts.pop()


def test_a_completions_prompt_is_its_text_and_a_list_of_one_prompt_the_same() -> None:
    as_text = prompt_text(routed("/v1/completions", {"prompt": DOCUMENT}))
    assert as_text == prompt_text(routed("/v1/completions", {"prompt": [DOCUMENT]}))
    assert as_text == prompt_text(routed("/api/worker_generate", {"generation_mode": "completion", "prompt": DOCUMENT}))
    assert DOCUMENT in as_text


@pytest.mark.parametrize(
    ("path", "document"),
    [
        ("/v1/embeddings", {"input": DOCUMENT}),
        ("/api/worker_get_embeddings", {"input": [DOCUMENT]}),
        ("/tokenize", {"prompt": DOCUMENT}),
        ("/v1/chat/completions", {"messages": "not a list"}),
    ],
    ids=["embeddings", "fastchat embeddings", "tokenize", "malformed chat"],
)
def test_what_fills_no_kv_cache_has_no_prompt_to_route_by(path: str, document: dict[str, Any]) -> None:
    assert prompt_text(routed(path, document)) == ""


def test_each_chunks_hash_covers_every_chunk_before_it() -> None:
    first, second = (
        chunk_hashes("a" * CHUNK_CHARS + "b" * CHUNK_CHARS),
        chunk_hashes("c" * CHUNK_CHARS + "b" * CHUNK_CHARS),
    )
    assert len(first) == len(second) == 2 and first[1] != second[1]
    assert chunk_hashes("a" * (CHUNK_CHARS - 1)) == []  # only whole chunks, as vLLM caches only whole blocks


async def test_the_replica_that_was_sent_the_longest_prefix_gets_the_follow_up_through_any_api() -> None:
    policy, replicas = Prefix(), [replica("a"), replica("b"), replica("c")]
    first = await policy.choose(openai_chat(HISTORY[:2]), replicas, [])
    other = await policy.choose(openai_chat([("system", OTHER_DOCUMENT), ("user", "Hi")]), replicas, [])
    assert other is not first
    for follow_up in (fastchat_chat(HISTORY), anthropic_message(HISTORY), response(HISTORY), openai_chat(HISTORY)):
        assert await policy.choose(follow_up, replicas, []) is first


async def test_of_two_replicas_holding_a_prefix_the_longer_match_wins_even_when_busier() -> None:
    policy, short, long = Prefix(), replica("short"), replica("long", in_flight=5)
    policy.sent_prefixes.sent(short.url, chunk_hashes(prompt_text(openai_chat(HISTORY[:1]))))
    policy.sent_prefixes.sent(long.url, chunk_hashes(prompt_text(openai_chat(HISTORY[:3]))))
    longer_conversation = HISTORY[:3] + [("user", "And then? " * 80)]
    assert await policy.choose(openai_chat(longer_conversation), [short, long], []) is long


async def test_a_prompt_sharing_too_little_with_every_replica_goes_to_the_one_holding_the_least_even_if_busier() -> (
    None
):
    """As SGLang's smallest tree: by load alone, new contexts pile up on one replica while the others are busy."""
    policy, holder, emptier = Prefix(), replica("holder"), replica("emptier", in_flight=2)
    policy.sent_prefixes.sent(holder.url, chunk_hashes(prompt_text(openai_chat([("user", DOCUMENT)]))))
    shares_a_quarter = [("user", DOCUMENT[: len(DOCUMENT) // 4] + OTHER_DOCUMENT * 2)]
    assert await policy.choose(openai_chat(shares_a_quarter), [holder, emptier], []) is emptier
    assert policy.sent_prefixes.held[emptier.url] == len(chunk_hashes(prompt_text(openai_chat(shares_a_quarter))))


async def test_new_contexts_alternate_between_replicas_holding_as_much() -> None:
    policy, first, second = Prefix(), replica("first"), replica("second")
    chosen = [await policy.choose(openai_chat([("system", f"{n} " + DOCUMENT)]), [first, second], []) for n in range(4)]
    assert chosen == [first, second, first, second]


async def test_when_loads_drift_apart_the_least_loaded_replica_gets_the_request_despite_the_prefix() -> None:
    policy = Prefix()
    holder, idle = replica("holder", in_flight=prefix.BALANCE_ABS + 1), replica("idle", in_flight=1)
    policy.sent_prefixes.sent(holder.url, chunk_hashes(prompt_text(openai_chat(HISTORY))))
    assert await policy.choose(openai_chat(HISTORY), [holder, idle], []) is holder  # within the absolute threshold
    holder.in_flight = prefix.BALANCE_ABS + 2
    assert await policy.choose(openai_chat(HISTORY), [holder, idle], []) is idle


async def test_a_request_without_a_prompt_to_route_by_goes_by_load_and_is_not_remembered() -> None:
    policy, busy, idle = Prefix(), replica("busy", in_flight=3), replica("idle")
    assert await policy.choose(routed("/v1/embeddings", {"input": DOCUMENT}), [busy, idle], []) is idle
    assert await policy.choose(openai_chat([("user", "Hi")]), [busy, idle], []) is idle  # shorter than a chunk
    assert len(policy.sent_prefixes.sent_chunks) == 0


def test_memory_is_bounded_and_forgets_the_least_recently_sent_tail_first() -> None:
    remembered = SentPrefixes(capacity=12)
    old, new = chunk_hashes(DOCUMENT), chunk_hashes(OTHER_DOCUMENT)
    remembered.sent("http://a", old)
    remembered.sent("http://b", new)
    assert len(remembered.sent_chunks) == 12 and sum(remembered.held.values()) == 12
    assert remembered.matched("http://b", new) == len(new)
    assert 0 < remembered.matched("http://a", old) < len(old)  # the old prompt's head is still there


async def test_a_replica_that_was_tried_and_failed_is_not_chosen_again() -> None:
    """The router passes the candidates it has not tried; the prefix's holder, set aside, is not one of them."""
    policy, holder, other = Prefix(), replica("holder"), replica("other")
    policy.sent_prefixes.sent(holder.url, chunk_hashes(prompt_text(openai_chat(HISTORY))))
    assert await policy.choose(openai_chat(HISTORY), [other], [holder]) is other
