"""Policy `prefix`: a request goes to the replica that was sent the longest prefix of its prompt.

vLLM keeps the KV cache of recent prompts (automatic prefix caching): a replica that computed a long
shared context (a system prompt, a document, a conversation so far) answers the next request that starts
with it in a fraction of the time. Routing by load alone spreads each such group over every replica, and
every replica must compute and hold every group's prefix.

The router remembers the prompts it sent to each replica, as chained hashes of fixed-size chunks of the
prompt's text: the hash of chunk k covers chunks 0..k, so a replica that was sent it was sent that whole
prefix. The text is the conversation in the order the worker's template renders it (roles normalized,
the system message first), so a FastChat chat, an OpenAI chat and an Anthropic message with the same
history have the same chunks; a completion's text is its prompt. The memory is bounded: the least
recently sent chunks go first, a prompt's tail before its head, as vLLM evicts blocks.

As in SGLang's cache-aware router: when loads drift apart (more than `BALANCE_ABS` requests and
`BALANCE_REL` times the least busy one's), the least loaded replica gets the request; otherwise the
replica that was sent the longest prefix, if that covers more than `CACHE_THRESHOLD` of the prompt;
otherwise the replica that holds the least prompt text, which then holds the new prefix (by load alone, the
groups' contexts pile up unevenly: one replica computes and serves more of them). What one router sent is
all it knows: two router instances each keep their own memory, and may send one group to two replicas.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import aiohttp

from llm_ops.access import GENERATION_ROUTES, RESPONSES_ROUTE
from llm_ops.protocol.worker import OPENAI_ROLES
from llm_ops.router.policy import LeastLoaded, RoutedRequest, share
from llm_ops.router.replicas import Replica, Replicas

CHUNK_CHARS = 256  # about 60 tokens: finer than vLLM's KV blocks (16 tokens on a GPU, 128 on the CPU build)
REMEMBERED_CHUNKS = 1 << 18  # 64 MiB of prompt text over all replicas, about 30 MB of memory
BALANCE_ABS = 32  # requests
BALANCE_REL = 1.5
CACHE_THRESHOLD = 0.3  # of the prompt's chunks
EMBEDDINGS = frozenset({"/v1/embeddings", "/api/worker_get_embeddings"})  # an input fills no cache


def prompt_text(request: RoutedRequest) -> str:
    """What the worker will render, as text: the conversation (FastChat's, OpenAI's, Anthropic's or the
    Responses API's) or the prompt. Empty for a request that is neither."""
    if request.path not in GENERATION_ROUTES or request.path in EMBEDDINGS:
        return ""
    document = request.document
    turns = list(conversation_turns(request))
    if turns:
        return "".join(f"\x1e{role}\x1f{text}" for role, text in turns)
    prompt = document.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:  # OpenAI's list of one prompt
        prompt = prompt[0]
    return f"\x1d{prompt}" if isinstance(prompt, str) else ""


def conversation_turns(request: RoutedRequest) -> Iterator[tuple[str, str]]:
    """The conversation of a chat request, whichever API it came through, as (OpenAI role, text): the system
    message first. Nothing for a request that is no conversation."""
    document, is_response = request.document, request.path == RESPONSES_ROUTE
    for system in (document.get("system_message"), document.get("system"), document.get("instructions")):
        if system is not None:
            yield "system", _text(system)
    turns = document.get("input") if is_response else document.get("messages")
    if isinstance(turns, str) and is_response:  # the Responses API's input may be one text
        turns = [{"role": "user", "content": turns}]
    for turn in turns if isinstance(turns, list) else []:
        if isinstance(turn, dict):
            role = str(turn.get("role"))
            yield OPENAI_ROLES.get(role, role), _text(turn.get("content", turn.get("text")))


def _text(content: object) -> str:
    """A message's text: a string, or the text parts of a list of parts (OpenAI's and Anthropic's)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text(part.get("text")) if isinstance(part, dict) else "" for part in content)
    return ""


def chunk_hashes(text: str) -> list[int]:
    """Chained hashes of the text's whole chunks: each covers every chunk up to it."""
    hashes, previous = [], 0
    for start in range(0, len(text) - CHUNK_CHARS + 1, CHUNK_CHARS):
        previous = hash((previous, text[start : start + CHUNK_CHARS]))
        hashes.append(previous)
    return hashes


@dataclass
class SentPrefixes:
    """Which chunk hashes were sent to which replica, least recently sent first, `capacity` at most (a
    replica that has gone ages out like the rest)."""

    capacity: int = REMEMBERED_CHUNKS
    sent_chunks: OrderedDict[tuple[str, int], None] = field(default_factory=OrderedDict)
    held: Counter[str] = field(default_factory=Counter)  # chunks remembered per replica

    def sent(self, replica_url: str, hashes: Sequence[int]) -> None:
        for chunk in reversed(hashes):  # the head is the most recently sent: evicted last
            key = (replica_url, chunk)
            if key in self.sent_chunks:
                self.sent_chunks.move_to_end(key)
            else:
                self.sent_chunks[key] = None
                self.held[replica_url] += 1
        while len(self.sent_chunks) > self.capacity:
            (evicted_from, _), _ = self.sent_chunks.popitem(last=False)
            self.held[evicted_from] -= 1

    def matched(self, replica_url: str, hashes: Sequence[int]) -> int:
        """How many of the leading chunks were sent to `replica_url`."""
        count = 0
        for chunk in hashes:
            if (replica_url, chunk) not in self.sent_chunks:
                break
            count += 1
        return count


@dataclass
class Prefix:
    """The replica that was sent the longest prefix of the prompt, unless loads are out of balance."""

    sent_prefixes: SentPrefixes = field(default_factory=SentPrefixes)
    by_load: LeastLoaded = field(default_factory=LeastLoaded)

    async def choose(self, request: RoutedRequest, candidates: Sequence[Replica], tried: Sequence[Replica]) -> Replica:
        hashes = chunk_hashes(prompt_text(request))
        if not hashes:
            return self.by_load.least_loaded(request.model, candidates)
        if out_of_balance(candidates):
            chosen = self.by_load.least_loaded(request.model, candidates)
        else:
            chosen = self._holding_the_longest_prefix(hashes, candidates) or self._holding_the_least(candidates)
        self.sent_prefixes.sent(chosen.url, hashes)
        return chosen

    def _holding_the_longest_prefix(self, hashes: list[int], candidates: Sequence[Replica]) -> Replica | None:
        matched = {replica: self.sent_prefixes.matched(replica.url, hashes) for replica in candidates}
        longest = max(matched.values())
        if longest <= CACHE_THRESHOLD * len(hashes):
            return None
        return min((replica for replica in candidates if matched[replica] == longest), key=share)

    def _holding_the_least(self, candidates: Sequence[Replica]) -> Replica:
        return min(candidates, key=lambda replica: (self.sent_prefixes.held[replica.url], share(replica)))

    async def follow(self, replicas: Replicas, http: aiohttp.ClientSession) -> None:
        pass

    def cached_blocks(self, replica: Replica) -> int | None:
        return None  # it knows what it sent, not what the replica kept


def out_of_balance(candidates: Sequence[Replica]) -> bool:
    loads = [replica.busy for replica in candidates]
    return max(loads) - min(loads) > BALANCE_ABS and max(loads) > BALANCE_REL * min(loads)
