"""Load that tests send through a front door (the native stack's or the containers') while they break
something: steady requests one after another (`Traffic`), and long streamed answers (`LongAnswer`)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from tests.conftest import FrontDoor, wait_until
from tests.integration.conftest import LONG_STORY, MODEL, chat, completion

REQUESTS_BEFORE_THE_BREAK = 2  # each flow sends these before the test breaks something: traffic flowed until then
REQUESTS_AFTER_THE_GAP = 5  # each flow sends at least these many once a gap is over, to show it is over


@dataclass
class LongAnswer:
    """A long answer streamed on a thread: when and how it ended ("complete", or what went wrong)."""

    route: str
    tokens: int = 400  # at most; greedy, so the same long answer each time
    replica: str = ""  # the worker it went to
    ended_at: float = 0.0
    outcome: str = ""
    started: threading.Event = field(default_factory=threading.Event)

    def run(self, stack: FrontDoor) -> None:
        try:
            with stack.client(timeout=120) as client:
                if self.route == "/api":
                    body = chat(messages=LONG_STORY, max_new_tokens=self.tokens)
                    url = f"/api/{MODEL}/worker_generate_stream"
                else:
                    prompt = "Once upon a time"
                    body = {
                        "model": MODEL,
                        "prompt": prompt,
                        "max_tokens": self.tokens,
                        "stream": True,
                        "temperature": 0,
                    }
                    url = "/v1/completions"
                with client.stream("POST", url, json=body) as response:
                    received = b""
                    for data in response.iter_raw():
                        self.started.set()
                        received += data
            self.outcome = self._judge(received)
        except httpx.HTTPError as error:
            self.outcome = f"cut: {error!r}"
        finally:
            self.ended_at = time.monotonic()
            self.started.set()

    def _judge(self, received: bytes) -> str:
        if self.route == "/v1":
            finished = b'"finish_reason":"length"' in received or b'"finish_reason":"stop"' in received
            return "complete" if finished and b'"error"' not in received else "error"
        last = received.rstrip(b"\0").rsplit(b"\0", 1)[-1]
        try:
            finish_reason = json.loads(last).get("finish_reason")
        except ValueError:
            return f"error: ends with {last[-80:]!r}"
        return "complete" if finish_reason in ("stop", "length") else f"error: ends with {last[-80:]!r}"


@dataclass
class Traffic:
    """Requests sent one after another on a thread until stopped: (sent at, answered at, succeeded, what went wrong)."""

    send: Callable[[httpx.Client], httpx.Response]
    results: list[tuple[float, float, bool, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, stack: FrontDoor) -> None:
        with stack.client(timeout=30) as client:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    response = self.send(client)
                    ok = response.status_code == 200 and "error" not in response.json()
                    self.results.append((sent, time.monotonic(), ok, "" if ok else response.text[:200]))
                except httpx.HTTPError as error:
                    self.results.append((sent, time.monotonic(), False, repr(error)))

    def sent(self, after: float = 0.0, before: float = float("inf")) -> int:
        return sum(1 for sent, *_ in self.results if after <= sent < before)

    def failures(self, sent_after: float = 0.0, answered_before: float = float("inf")) -> list[str]:
        return [
            why
            for sent, answered, ok, why in self.results
            if not ok and sent_after <= sent and answered < answered_before
        ]


def wait_until_each_sent(
    flows: Iterable[Traffic], after: float, count: int = REQUESTS_AFTER_THE_GAP, timeout: float = 120.0
) -> None:
    """Until every flow has sent `count` requests after `after` (a time.monotonic()), for at most `timeout`
    seconds after `after`: whatever went wrong before then is over if those succeed."""
    flows = list(flows)
    wait_until(
        lambda: all(flow.sent(after=after) >= count for flow in flows),
        after + timeout - time.monotonic(),
        f"every flow to send {count} requests after that moment (too little traffic to show anything)",
        interval=0.2,
    )


def start_traffic(flows: Iterable[Traffic], front_door: FrontDoor) -> list[threading.Thread]:
    """Runs each flow on a thread of its own; returns the threads once every flow has sent (and heard back
    about) REQUESTS_BEFORE_THE_BREAK requests."""
    flows = list(flows)
    threads = [threading.Thread(target=flow.run, args=(front_door,)) for flow in flows]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    wait_until_each_sent(flows, after=started, count=REQUESTS_BEFORE_THE_BREAK)
    return threads


def stop_all(flows: Iterable[Traffic], threads: Iterable[threading.Thread], timeout: float) -> None:
    """Stops the flows and waits up to `timeout` s for each thread; a thread still alive then has hung."""
    for flow in flows:
        flow.stop.set()
    for thread in threads:
        thread.join(timeout=timeout)


def flows_through_both_apis() -> dict[str, Traffic]:
    """Requests one after another through each API, FastChat's route and /v1 (through Traefik and the routers)."""
    openai_body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    return {
        "openai": Traffic(lambda client: client.post("/v1/completions", json=openai_body)),
        "worker": Traffic(lambda client: client.post(f"/api/{MODEL}/worker_generate", json=completion())),
    }


@contextmanager
def flowing(flows: Iterable[Traffic], front_door: FrontDoor) -> Iterator[None]:
    """The flows running (start_traffic) while the block runs, then stopped; fails if a request hung."""
    flows = list(flows)
    threads = start_traffic(flows, front_door)
    try:
        yield
    finally:
        stop_all(flows, threads, timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a request hung"
