"""Policy `kv-events` (`llm_ops.router.kv_events`): a request goes to the replica whose KV cache holds the
longest run of its prompt's leading blocks, as the workers' KV-cache events say, unless loads are out of balance.

The frames in tests/unit/data were recorded from vLLM 0.32's CPU build serving the default model (128-token
blocks): kv_events_vllm_0_32.msgpack is 21 published messages (topic, sequence number, payload) of ten
~1,900-token completions that filled the cache, eight more that evicted blocks, and a chat then its follow-up
(whose blocks chain to the chat's); kv_events_chat_tokens.json is the two chats' tokens as that worker's
/tokenize gave them. kv_events_array_form.msgpack is the same messages re-encoded as vLLM did before 2026
(each event a tagged array), plus an AllBlocksCleared."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio

from llm_ops.router import prefix
from llm_ops.router.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    CachedBlocks,
    EventSource,
    KvEvents,
    Subscription,
    decode_batch,
    prompt_block_keys,
    tokenize_body,
)
from llm_ops.router.policy import RoutedRequest
from llm_ops.router.replicas import Load, Replica
from tests.conftest import free_port

pytestmark = pytest.mark.anyio
DATA = Path(__file__).parent / "data"
BLOCK = 128  # the CPU build's block size, as the recorded events say
CHATS = json.loads((DATA / "kv_events_chat_tokens.json").read_text())


def recorded(name: str) -> list[list[bytes]]:
    frames: list[list[bytes]] = msgspec.msgpack.decode((DATA / name).read_bytes())
    return frames


def events_of(name: str) -> list[Any]:
    return [event for _, _, payload in recorded(name) for event in decode_batch(payload)]


def replica(name: str, in_flight: int = 0, capacity: int = 64) -> Replica:
    return Replica(f"http://{name}", frozenset({"m"}), in_flight=in_flight, load=Load(capacity=capacity), admitted=True)


def stored(tokens: list[int], parent_hash: int | None = None, first_hash: int = 1) -> BlockStored:
    blocks = len(tokens) // BLOCK
    hashes: list[int | bytes] = list(range(first_hash, first_hash + blocks))
    return BlockStored(hashes, parent_hash, tokens[: blocks * BLOCK], BLOCK)


LONG_TEXT = "a question long enough to be worth routing by cache " * 8  # a shorter prompt goes by load


def chat(messages: list[dict[str, str]]) -> RoutedRequest:
    return RoutedRequest("m", "/v1/chat/completions", json.dumps({"model": "m", "messages": messages}).encode())


def policy_with(holdings: dict[Replica, list[Any]], tokens: list[int]) -> KvEvents:
    """A policy whose index holds, per replica, what `holdings` stored, and whose tokenizer answers `tokens`."""
    policy = KvEvents()
    for holder, events in holdings.items():
        blocks = policy.index.blocks[holder.url] = CachedBlocks()
        for event in events:
            blocks.apply(event)
    policy.http = FakeTokenizer(tokens)  # type: ignore[assignment]
    return policy


class FakeTokenizer:
    """What `prompt_tokens` calls on the router's HTTP session: one POST /tokenize, answered with `tokens`."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens, self.asked = tokens, 0

    def post(self, url: str, **_: Any) -> Any:
        self.asked += 1
        tokens = self.tokens

        class Answer:
            status = 200

            async def json(self) -> dict[str, Any]:
                return {"tokens": tokens, "count": len(tokens)}

            async def __aenter__(self) -> Answer:
                return self

            async def __aexit__(self, *_: object) -> None:
                return None

        return Answer()


def test_both_event_encodings_decode_to_the_same_events_from_recorded_frames() -> None:
    current, older = events_of("kv_events_vllm_0_32.msgpack"), events_of("kv_events_array_form.msgpack")
    assert current == older[:-1] and older[-1] == AllBlocksCleared()
    kinds = {type(event) for event in current}
    assert kinds == {BlockStored, BlockRemoved}
    first = current[0]
    assert isinstance(first, BlockStored) and first.block_size == BLOCK and first.parent_block_hash is None
    assert len(first.token_ids) == BLOCK * len(first.block_hashes)


def test_what_is_no_batch_of_known_events_is_skipped() -> None:
    assert decode_batch(b"not msgpack \xc1") == []
    malformed = msgspec.msgpack.encode([0.0, [{"type": "BlockStored"}, {"type": "Other"}, ["AllBlocksCleared"]]])
    assert decode_batch(malformed) == [AllBlocksCleared()]


def test_the_blocks_a_real_engine_stored_for_a_chat_match_its_tokens_and_its_follow_up_chains_to_them() -> None:
    blocks = CachedBlocks()
    for event in events_of("kv_events_vllm_0_32.msgpack"):
        blocks.apply(event)
    first, follow_up = CHATS["first_tokens"], CHATS["follow_up_tokens"]
    assert blocks.block_size == BLOCK
    assert blocks.matched(prompt_block_keys(first, BLOCK)) == len(first) // BLOCK  # 794 tokens: 6 whole blocks
    assert blocks.matched(prompt_block_keys(follow_up, BLOCK)) == len(follow_up) // BLOCK  # 9, 3 stored later
    assert blocks.matched(prompt_block_keys([7, *first[1:]], BLOCK)) == 0  # a different first token: nothing


def test_evicted_blocks_stop_counting_as_the_recorded_removals_say() -> None:
    events = events_of("kv_events_vllm_0_32.msgpack")
    blocks = CachedBlocks()
    for event in events:
        blocks.apply(event)
    removed = {h for event in events if isinstance(event, BlockRemoved) for h in event.block_hashes}
    assert removed and not removed & blocks.keys.keys()
    stored_hashes = {h for event in events if isinstance(event, BlockStored) for h in event.block_hashes}
    assert sum(blocks.held.values()) == len(stored_hashes - removed)


def test_a_removed_block_ends_the_run_at_it_and_a_cleared_cache_holds_nothing() -> None:
    tokens = list(range(4 * BLOCK))
    blocks = CachedBlocks()
    blocks.apply(stored(tokens))
    keys = prompt_block_keys(tokens, BLOCK)
    assert blocks.matched(keys) == 4
    blocks.apply(BlockRemoved([3]))
    assert blocks.matched(keys) == 2
    blocks.apply(AllBlocksCleared())
    assert blocks.matched(keys) == 0 and not blocks.held


def test_a_block_held_in_two_media_counts_until_the_last_one_drops_it() -> None:
    tokens = list(range(BLOCK))
    blocks = CachedBlocks()
    blocks.apply(BlockStored([1], None, tokens, BLOCK, medium="GPU"))
    blocks.apply(BlockStored([1], None, tokens, BLOCK, medium="CPU"))
    blocks.apply(BlockRemoved([1], medium="GPU"))
    assert blocks.matched(prompt_block_keys(tokens, BLOCK)) == 1
    blocks.apply(BlockRemoved([1], medium="CPU"))
    assert blocks.matched(prompt_block_keys(tokens, BLOCK)) == 0


def test_blocks_stored_with_extra_keys_or_an_unknown_parent_never_match_a_plain_prompt() -> None:
    tokens = list(range(2 * BLOCK))
    salted, orphan = CachedBlocks(), CachedBlocks()
    salted.apply(BlockStored([1, 2], None, tokens, BLOCK, salt=(("lora", None), None)))
    orphan.apply(BlockStored([2], 1, tokens[BLOCK:], BLOCK))
    keys = prompt_block_keys(tokens, BLOCK)
    assert salted.matched(keys) == 0 and orphan.matched(keys) == 0 and not orphan.held


async def test_the_replica_holding_the_longest_prefix_wins_even_when_busier() -> None:
    tokens = list(range(6 * BLOCK))
    short, long, empty = replica("short"), replica("long", in_flight=5), replica("empty")
    policy = policy_with({short: [stored(tokens[: 2 * BLOCK])], long: [stored(tokens[: 5 * BLOCK])]}, tokens)
    assert await policy.choose(chat([{"role": "user", "content": LONG_TEXT}]), [short, long, empty], []) is long


async def test_the_load_escape_takes_over_past_its_threshold() -> None:
    tokens = list(range(4 * BLOCK))
    holder, idle = replica("holder", in_flight=prefix.BALANCE_ABS + 1), replica("idle", in_flight=1)
    policy = policy_with({holder: [stored(tokens)]}, tokens)
    request = chat([{"role": "user", "content": LONG_TEXT}])
    assert await policy.choose(request, [holder, idle], []) is holder  # within the absolute threshold
    holder.in_flight = prefix.BALANCE_ABS + 2
    assert await policy.choose(request, [holder, idle], []) is idle


async def test_without_a_cached_block_the_emptiest_cache_gets_it_and_without_a_long_prompt_the_least_loaded() -> None:
    tokens = list(range(4 * BLOCK))
    holder, empty = replica("holder"), replica("empty", in_flight=2)
    policy = policy_with({holder: [stored(tokens)]}, list(range(9000, 9000 + 4 * BLOCK)))
    assert await policy.choose(chat([{"role": "user", "content": LONG_TEXT}]), [holder, empty], []) is empty
    asked = policy.http.asked  # type: ignore[union-attr]
    embeddings = RoutedRequest("m", "/v1/embeddings", b'{"model": "m", "input": "x"}')
    assert await policy.choose(embeddings, [holder, empty], []) is holder
    assert await policy.choose(chat([{"role": "user", "content": "Hi"}]), [holder, empty], []) is holder
    assert policy.http.asked == asked  # type: ignore[union-attr]
    nobody = policy_with({}, tokens)
    assert await nobody.choose(chat([{"role": "user", "content": LONG_TEXT}]), [holder, empty], []) is holder
    assert nobody.http.asked == 0  # type: ignore[union-attr]


def test_a_fastchat_chat_and_an_openai_chat_ask_for_the_same_tokens() -> None:
    turns = [("user", "Hi"), ("assistant", "Hello"), ("user", "?")]
    fastchat_roles = {"user": "human", "assistant": "ai"}
    fastchat_body = {
        "model_identifier": "m",
        "generation_mode": "chat",
        "system_message": "Be brief.",
        "messages": [{"role": fastchat_roles[role], "text": text} for role, text in turns],
    }
    fastchat = RoutedRequest("m", "/api/worker_generate", json.dumps(fastchat_body).encode())
    messages = [{"role": "system", "content": "Be brief."}] + [{"role": r, "content": t} for r, t in turns]
    assert tokenize_body(fastchat) == tokenize_body(chat(messages))
    assert tokenize_body(chat(messages)) == {"model": "m", "messages": messages, "add_generation_prompt": True}
    completion = RoutedRequest("m", "/v1/completions", b'{"model": "m", "prompt": ["Once upon"]}')
    assert tokenize_body(completion) == {"model": "m", "prompt": "Once upon"}


class Publisher:
    """vLLM's ZmqEventPublisher's sockets, replaying `frames` from a start sequence number on request."""

    def __init__(self, context: zmq.asyncio.Context, frames: list[list[bytes]]) -> None:
        self.port, self.replay_port = free_port(), free_port()
        self.pub, self.replay = context.socket(zmq.PUB), context.socket(zmq.ROUTER)
        self.pub.bind(f"tcp://127.0.0.1:{self.port}")
        self.replay.bind(f"tcp://127.0.0.1:{self.replay_port}")
        self.frames, self.replayed_from = frames, list[int]()

    async def serve_replays(self) -> None:
        while True:
            client, _, start = await self.replay.recv_multipart()
            self.replayed_from.append(int.from_bytes(start, "big"))
            for topic, seq, payload in self.frames:
                if int.from_bytes(seq, "big") >= self.replayed_from[-1]:
                    await self.replay.send_multipart([client, b"", topic, seq, payload])
            await self.replay.send_multipart([client, b"", b"", (-1).to_bytes(8, "big", signed=True), b""])

    def close(self) -> None:
        self.pub.close(linger=0)
        self.replay.close(linger=0)


@pytest.fixture
async def context() -> AsyncIterator[zmq.asyncio.Context]:
    context = zmq.asyncio.Context()
    yield context
    context.destroy(linger=0)


async def test_a_subscriber_reads_the_replay_on_connecting_then_refills_a_gap_from_it(
    context: zmq.asyncio.Context,
) -> None:
    frames = recorded("kv_events_vllm_0_32.msgpack")
    publisher = Publisher(context, frames[:19])
    replays = asyncio.create_task(publisher.serve_replays())
    source = EventSource("127.0.0.1", publisher.port, publisher.replay_port, "kv")
    subscription = Subscription(source, CachedBlocks(), context)
    following = asyncio.create_task(subscription.run())
    try:
        await _until(lambda: subscription.next_seq == 19)
        publisher.frames = frames
        await asyncio.sleep(0.3)  # the subscription has reached the publisher
        await publisher.pub.send_multipart(frames[20])  # 19 was missed
        await _until(lambda: subscription.next_seq == 21)
        assert publisher.replayed_from == [0, 19]
        keys = prompt_block_keys(CHATS["follow_up_tokens"], BLOCK)
        assert subscription.blocks.matched(keys) == len(keys)
    finally:
        following.cancel()
        replays.cancel()
        await asyncio.gather(following, replays, return_exceptions=True)
        publisher.close()


async def _until(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)
