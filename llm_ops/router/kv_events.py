"""Policy `kv-events`: a request goes to the replica whose KV cache holds the longest run of its prompt's
leading blocks, as the replicas themselves say.

Each worker started with `--kv-events-port` publishes vLLM's KV-cache events (ZeroMQ PUB, bound on every
interface; `GET /kv_events` says on which port): which blocks its engine stored, which it evicted, and
when it cleared them all. The router subscribes to every admitted replica that publishes, at the
replica's host, and keeps which blocks each one holds. Two routers read the same events and so know the
same: no router's own history is involved (unlike `llm_ops.router.prefix`).

Matching a request needs its blocks as vLLM hashes them: the token ids, cut into `block_size` blocks,
each hashed with its parent's hash, with vLLM's hash function and seed. The router does not recompute
vLLM's hashes (the algorithm is a flag, and the seed of a non-cryptographic one is random per engine).
A `BlockStored` event carries each block's tokens and its parent's hash, so the router gives every
stored block a key of its own, chained the same way: the key of (its parent's key, its token ids), and
maps vLLM's hash to that key for the `BlockRemoved` that will name it. The request's blocks, keyed
alike, match exactly the blocks vLLM would find cached (a block stored with LoRA, multimodal or salt
keys never matches a plain prompt's). A block whose parent the router never saw (stored before it
subscribed, beyond what the publisher replays) cannot be keyed and is left out.

The prompt's tokens come from the worker: vLLM's own `/tokenize` renders a chat with the worker's
template and tokenizes it exactly as the generation will (measured on the build machine, an idle
engine, a 800-1,200-token chat: 6-7 ms a request; a tokenizer in the router takes 1-1.6 ms but needs
transformers (8 s to import, ~0.5 GB) and the model's tokenizer and template in the router's process).

Events arrive as ZeroMQ messages of three frames: topic, sequence number (8 bytes, big-endian), and
msgpack of `[timestamp, [events...], data-parallel rank]`. An event is a map with a `type` key (vLLM
0.32) or, in older vLLMs, an array `[type, fields...]`. On a subscriber's first connection, and when a
sequence number is skipped, the replay socket (the next port) sends what the publisher still buffers;
if it does not answer, that replica's blocks are forgotten and learned again as they are stored. A
replica that leaves the controller's list or is set aside is forgotten; admitted again, it is read again
from its replay buffer.

Scoring as `llm_ops.router.prefix`: when loads are out of balance the least loaded replica gets the
request; otherwise the replica with the longest run of cached leading blocks (the least loaded of
those that tie), if any holds one; otherwise the one holding the fewest blocks.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
import zmq
import zmq.asyncio

from llm_ops.access import GENERATION_ROUTES, KV_EVENTS_ROUTE
from llm_ops.router.policy import LeastLoaded, RoutedRequest, share
from llm_ops.router.prefix import CHUNK_CHARS, EMBEDDINGS, conversation_turns, out_of_balance, prompt_text
from llm_ops.router.replicas import Replica, Replicas

logger = logging.getLogger(__name__)

BlockHash = int | bytes  # vLLM's ExternalBlockHash: 64-bit ints by default, the hash's bytes otherwise
TOKENIZE_TIMEOUT = aiohttp.ClientTimeout(total=2.0)
REPLAY_TIMEOUT = 5.0  # seconds for the replay socket's next message
FOLLOW_INTERVAL = 0.5  # seconds between looks at which replicas to subscribe to
RETRY_SECONDS = 30.0  # before asking again a replica that publishes no events
END_OF_REPLAY = -1


@dataclass(frozen=True)
class BlockStored:
    block_hashes: list[BlockHash]
    parent_block_hash: BlockHash | None
    token_ids: list[int]
    block_size: int
    medium: str | None = None
    salt: tuple[Any, ...] | None = None  # LoRA and per-block extra keys: a plain prompt never matches these blocks


@dataclass(frozen=True)
class BlockRemoved:
    block_hashes: list[BlockHash]
    medium: str | None = None


@dataclass(frozen=True)
class AllBlocksCleared:
    pass


KvEvent = BlockStored | BlockRemoved | AllBlocksCleared
# Older vLLMs sent each event as an array: its fields in this order after the type.
ARRAY_FIELDS = {
    "BlockStored": ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium"),
    "BlockRemoved": ("block_hashes", "medium"),
    "AllBlocksCleared": (),
}


def decode_batch(payload: bytes) -> list[KvEvent]:
    """The events of one published batch; unknown event types, and what is not msgpack, are skipped."""
    try:
        batch = msgspec.msgpack.decode(payload)
    except msgspec.DecodeError:
        return []
    events = batch[1] if isinstance(batch, list) and len(batch) > 1 and isinstance(batch[1], list) else []
    return [event for raw in events if (event := _decoded_or_none(raw)) is not None]


def _decoded_or_none(raw: object) -> KvEvent | None:
    try:
        return decode_event(raw)
    except (KeyError, TypeError, ValueError):  # a field missing or of another type: not an event we know
        return None


def decode_event(raw: object) -> KvEvent | None:
    if isinstance(raw, list) and raw and isinstance(raw[0], str):
        kind, names = raw[0], ARRAY_FIELDS.get(raw[0], ())
        fields: dict[str, Any] = dict(zip(names, raw[1:], strict=False))
    elif isinstance(raw, dict):
        kind, fields = str(raw.get("type")), raw
    else:
        return None
    if kind == "BlockStored":
        salt = (fields.get("lora_id"), fields.get("lora_name"))
        extra = [keys for keys in fields.get("extra_keys") or [] if keys is not None]  # one entry a block, or None
        return BlockStored(
            block_hashes=list(fields["block_hashes"]),
            parent_block_hash=fields.get("parent_block_hash"),
            token_ids=list(fields["token_ids"]),
            block_size=int(fields["block_size"]),
            medium=fields.get("medium"),
            salt=None if salt == (None, None) and not extra else (salt, _frozen(extra)),
        )
    if kind == "BlockRemoved":
        return BlockRemoved(block_hashes=list(fields["block_hashes"]), medium=fields.get("medium"))
    if kind == "AllBlocksCleared":
        return AllBlocksCleared()
    return None


def _frozen(value: object) -> object:
    return tuple(_frozen(item) for item in value) if isinstance(value, list | tuple) else value


def block_key(parent_key: int | None, token_ids: Sequence[int], salt: object = None) -> int:
    """The router's own key of a block: its tokens, chained to its parent's key (vLLM's shape of hash)."""
    return hash((parent_key, tuple(token_ids), salt))


def prompt_block_keys(token_ids: Sequence[int], block_size: int) -> list[int]:
    """The keys of a prompt's whole blocks, as `CachedBlocks` keys stored ones (vLLM caches only whole blocks)."""
    keys: list[int] = []
    parent: int | None = None
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = block_key(parent, token_ids[start : start + block_size])
        keys.append(parent)
    return keys


@dataclass
class CachedBlocks:
    """The blocks one replica's KV cache holds, as its events said."""

    block_size: int | None = None  # learned from its first stored block
    keys: dict[BlockHash, int] = field(default_factory=dict)  # vLLM's hash -> the router's key
    media: dict[BlockHash, set[str | None]] = field(default_factory=dict)  # where vLLM holds each (GPU, CPU, ...)
    held: Counter[int] = field(default_factory=Counter)  # the router's keys held, with how many vLLM hashes

    def apply(self, event: KvEvent) -> None:
        if isinstance(event, BlockStored):
            self._stored(event)
        elif isinstance(event, BlockRemoved):
            for block_hash in event.block_hashes:
                self._removed(block_hash, event.medium)
        else:
            self.clear()

    def _stored(self, event: BlockStored) -> None:
        self.block_size = event.block_size
        parent = None if event.parent_block_hash is None else self.keys.get(event.parent_block_hash)
        if event.parent_block_hash is not None and parent is None:
            return  # its parent was stored before this router listened: it cannot be keyed
        for index, block_hash in enumerate(event.block_hashes):
            tokens = event.token_ids[index * event.block_size : (index + 1) * event.block_size]
            parent = self.keys.get(block_hash) or block_key(parent, tokens, event.salt)
            media = self.media.setdefault(block_hash, set())
            if not media:
                self.keys[block_hash] = parent
                self.held[parent] += 1
            media.add(event.medium)

    def _removed(self, block_hash: BlockHash, medium: str | None) -> None:
        media = self.media.get(block_hash)
        if media is None:
            return
        media.discard(medium)
        if media:
            return
        del self.media[block_hash]
        key = self.keys.pop(block_hash)
        self.held[key] -= 1
        if self.held[key] <= 0:
            del self.held[key]

    def clear(self) -> None:
        self.keys.clear()
        self.media.clear()
        self.held.clear()

    def matched(self, keys: Sequence[int]) -> int:
        """How many of the leading `keys` this replica holds."""
        count = 0
        for key in keys:
            if key not in self.held:
                break
            count += 1
        return count


@dataclass(frozen=True)
class EventSource:
    """Where a replica publishes: `GET /kv_events`'s answer, at the replica's host."""

    host: str
    port: int
    replay_port: int
    topic: str

    def address(self, port: int) -> str:
        return f"tcp://[{self.host}]:{port}" if ":" in self.host else f"tcp://{self.host}:{port}"


@dataclass
class Subscription:
    """One replica's events, applied to its `CachedBlocks` in order; a gap is filled from the replay socket."""

    source: EventSource
    blocks: CachedBlocks
    context: zmq.asyncio.Context
    next_seq: int = 0

    async def run(self) -> None:
        subscriber = self.context.socket(zmq.SUB)
        subscriber.setsockopt(zmq.SUBSCRIBE, self.source.topic.encode())
        subscriber.connect(self.source.address(self.source.port))
        try:
            await self.catch_up()  # subscribed first: nothing published meanwhile is lost
            while True:
                if self.receive(await subscriber.recv_multipart()):
                    await self.catch_up()
        finally:
            subscriber.close(linger=0)

    def receive(self, frames: list[bytes]) -> bool:
        """Apply a live message; True when messages before it were missed (it is left for the replay)."""
        if len(frames) != 3:
            return False
        seq = int.from_bytes(frames[1], "big", signed=True)
        if seq > self.next_seq:
            return True
        if seq == self.next_seq:
            self.apply(seq, frames[2])
        return False  # an older one was replayed already

    def apply(self, seq: int, payload: bytes) -> None:
        for event in decode_batch(payload):
            self.blocks.apply(event)
        self.next_seq = seq + 1

    async def catch_up(self) -> None:
        try:
            await self.replay(self.next_seq)
        except (TimeoutError, zmq.ZMQError, ValueError, IndexError) as error:
            logger.warning("KV events of %s: no replay (%r): its blocks are learned anew", self.source, error)
            self.blocks.clear()

    async def replay(self, start: int) -> None:
        requester = self.context.socket(zmq.DEALER)
        requester.connect(self.source.address(self.source.replay_port))
        try:
            await requester.send_multipart([b"", start.to_bytes(8, "big")])
            while True:
                frames = await asyncio.wait_for(requester.recv_multipart(), REPLAY_TIMEOUT)
                seq = int.from_bytes(frames[2], "big", signed=True)
                if seq == END_OF_REPLAY:
                    return
                if seq >= self.next_seq:
                    if seq > self.next_seq:  # older ones left the publisher's buffer: start from what it has
                        self.blocks.clear()
                    self.apply(seq, frames[3])
        finally:
            requester.close(linger=0)


@dataclass
class KvEventsIndex:
    """Every followed replica's cached blocks, by URL."""

    blocks: dict[str, CachedBlocks] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    silent_until: dict[str, float] = field(default_factory=dict)  # replicas that publish nothing, asked again later

    def of(self, replica: Replica) -> CachedBlocks | None:
        return self.blocks.get(replica.url)

    async def follow(self, replicas: Replicas, http: aiohttp.ClientSession) -> None:
        context = zmq.asyncio.Context()
        try:
            while True:
                self.update(replicas, http, context)
                await asyncio.sleep(FOLLOW_INTERVAL)
        finally:
            for url in list(self.tasks):
                self.forget(url)
            await asyncio.sleep(0)
            context.destroy(linger=0)

    def update(self, replicas: Replicas, http: aiohttp.ClientSession, context: zmq.asyncio.Context) -> None:
        admitted = {replica.url for replica in replicas if replica.admitted}
        for url in self.tasks.keys() - admitted:
            self.forget(url)
        now = asyncio.get_running_loop().time()
        for url in admitted - self.tasks.keys():
            if self.silent_until.get(url, 0.0) <= now:
                self.tasks[url] = asyncio.create_task(self.subscribe(url, http, context))

    def forget(self, url: str) -> None:
        task = self.tasks.pop(url, None)
        if task is not None:
            task.cancel()
        self.blocks.pop(url, None)

    async def subscribe(self, url: str, http: aiohttp.ClientSession, context: zmq.asyncio.Context) -> None:
        try:
            source = await event_source(http, url)
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError) as error:
            logger.info("replica %s publishes no KV-cache events (%r): routed by load", url, error)
            self.silent_until[url] = asyncio.get_running_loop().time() + RETRY_SECONDS
            self.tasks.pop(url, None)
            return
        logger.info("following the KV-cache events of %s at %s", url, source.address(source.port))
        blocks = self.blocks[url] = CachedBlocks()
        try:
            await Subscription(source, blocks, context).run()
        except (zmq.ZMQError, ValueError, IndexError) as error:  # a socket that failed, a message that is no batch
            logger.warning("KV events of %s stopped (%r): followed anew in a moment", url, error)
            self.tasks.pop(url, None)
            self.blocks.pop(url, None)


async def event_source(http: aiohttp.ClientSession, replica_url: str) -> EventSource:
    async with http.get(f"{replica_url}{KV_EVENTS_ROUTE}", timeout=TOKENIZE_TIMEOUT, raise_for_status=True) as answer:
        published = await answer.json()
    host = urlsplit(replica_url).hostname or "127.0.0.1"
    return EventSource(host, int(published["port"]), int(published["replay_port"]), str(published["topic"]))


def tokenize_body(request: RoutedRequest) -> dict[str, Any] | None:
    """What vLLM's `/tokenize` takes to give the request's prompt tokens as the generation will have them;
    None for a request without a prompt (embeddings, a stored response's routes, ...)."""
    if request.path not in GENERATION_ROUTES or request.path in EMBEDDINGS:
        return None
    turns = [{"role": role, "content": text} for role, text in conversation_turns(request)]
    if turns:
        return {"model": request.model, "messages": turns, "add_generation_prompt": True}
    prompt = request.document.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    return {"model": request.model, "prompt": prompt} if isinstance(prompt, str) and prompt else None


async def prompt_tokens(http: aiohttp.ClientSession, replica: Replica, body: dict[str, Any]) -> list[int] | None:
    """The prompt's token ids, from `replica`'s tokenizer; None when it does not answer them."""
    try:
        async with http.post(f"{replica.url}/tokenize", json=body, timeout=TOKENIZE_TIMEOUT) as answer:
            if answer.status != 200:
                return None
            tokens = (await answer.json()).get("tokens")
    except (TimeoutError, aiohttp.ClientError, ValueError) as error:
        logger.info("no tokens from %s (%r): routed by load", replica.url, error)
        return None
    return tokens if isinstance(tokens, list) else None


@dataclass
class KvEvents:
    """The replica whose KV cache holds the longest run of the prompt's leading blocks, unless loads are out of
    balance."""

    index: KvEventsIndex = field(default_factory=KvEventsIndex)
    by_load: LeastLoaded = field(default_factory=LeastLoaded)
    http: aiohttp.ClientSession | None = None

    async def choose(self, request: RoutedRequest, candidates: Sequence[Replica], tried: Sequence[Replica]) -> Replica:
        if out_of_balance(candidates) or len(prompt_text(request)) < CHUNK_CHARS:  # too short to cache much
            return self.by_load.least_loaded(request.model, candidates)
        holding = [replica for replica in candidates if (blocks := self.index.of(replica)) and blocks.held]
        chosen = await self._by_cache(request, candidates) if holding else None
        return chosen or self._holding_the_least(candidates)

    def _holding_the_least(self, candidates: Sequence[Replica]) -> Replica:
        """For a prompt no replica holds: the emptiest cache, as `llm_ops.router.prefix` does."""

        def held(replica: Replica) -> int:
            blocks = self.index.of(replica)
            return len(blocks.held) if blocks else 0

        return min(candidates, key=lambda replica: (held(replica), share(replica)))

    async def _by_cache(self, request: RoutedRequest, candidates: Sequence[Replica]) -> Replica | None:
        body = tokenize_body(request)
        if body is None or self.http is None:
            return None
        tokens = await prompt_tokens(self.http, min(candidates, key=share), body)
        if not tokens:
            return None
        matched = dict(self.matches(tokens, candidates))
        longest = max(matched.values(), default=0)
        if longest == 0:
            return None
        return min((replica for replica in candidates if matched.get(replica) == longest), key=share)

    def matches(self, tokens: Sequence[int], candidates: Sequence[Replica]) -> Iterator[tuple[Replica, int]]:
        """Each candidate with how many of the prompt's leading blocks it holds."""
        keys_by_size: dict[int, list[int]] = {}
        for replica in candidates:
            blocks = self.index.of(replica)
            if blocks is None or blocks.block_size is None:
                continue
            if blocks.block_size not in keys_by_size:
                keys_by_size[blocks.block_size] = prompt_block_keys(tokens, blocks.block_size)
            yield replica, blocks.matched(keys_by_size[blocks.block_size])

    async def follow(self, replicas: Replicas, http: aiohttp.ClientSession) -> None:
        self.http = http
        await self.index.follow(replicas, http)

    def cached_blocks(self, replica: Replica) -> int | None:
        blocks = self.index.of(replica)
        return len(blocks.held) if blocks else None
