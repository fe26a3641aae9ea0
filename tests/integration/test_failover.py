"""Two replicas; one is killed (SIGKILL) under steady traffic and with answers streaming. Streams on the
dead replica end (with an error or cut short) within seconds, never hang; requests keep succeeding,
the controller drops the dead worker after its heartbeats stop, and the replica, restarted, serves
again."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import psutil
import pytest

from tests.conftest import wait_until
from tests.integration.conftest import (
    HEART_BEAT_EXPIRATION,
    MODEL,
    RESTART_TIMEOUT,
    Stack,
    completion,
    worker_processes,
)
from tests.traffic import LongAnswer, Traffic, start_traffic, stop_all, wait_until_each_sent

pytestmark = pytest.mark.integration
SETTLE_SECONDS = 5.0  # after the kill, a health-check interval (2 s) and a controller refresh, with margin
STREAM_END_BOUND = 10.0  # seconds after the kill by which a stream on the dead replica has ended
PROCESSES_GONE_BOUND = 60.0  # seconds; 2 s measured, 25 s when the kernel starved them (llm_ops.stack.StackProcess)
MAX_LONG_ANSWERS = 10  # started to get one through each route onto the replica about to die


class ProcessesGone(threading.Thread):
    """Waits on a thread until `processes` have exited and been reaped: `at` when, `alive` the rest."""

    def __init__(self, processes: list[psutil.Process]) -> None:
        super().__init__(daemon=True)
        self.processes, self.alive, self.at = processes, processes, float("inf")
        self.start()

    def run(self) -> None:
        _, self.alive = psutil.wait_procs(self.processes, timeout=PROCESSES_GONE_BOUND)
        self.at = time.monotonic()


def start_long_answers(stack: Stack, victim: str) -> tuple[list[LongAnswer], list[threading.Thread]]:
    """Long answers through /api and /v1, started one at a time, until `victim` streams one of each at
    once (Traefik and the controller pick the replica; an answer can end before the other route's has
    reached `victim`). An answer's replica is the one whose queue grew when it started."""
    answers: list[LongAnswer] = []
    threads: list[threading.Thread] = []
    for _ in range(MAX_LONG_ANSWERS):
        streaming = {answer.route for answer in answers if answer.replica == victim and not answer.ended_at}
        missing = [route for route in ("/api", "/v1") if route not in streaming]
        if not missing:
            return answers, threads
        before = {url: stack.worker_queue_length(url) for url in stack.worker_urls}
        answer = LongAnswer(missing[0])
        threads.append(threading.Thread(target=answer.run, args=(stack,)))
        threads[-1].start()
        assert answer.started.wait(timeout=60), f"a long answer on {answer.route} did not start"
        grown = [url for url in stack.worker_urls if stack.worker_queue_length(url) > before[url]]
        answer.replica = grown[0] if len(grown) == 1 else "unknown"
        answers.append(answer)
    pytest.fail(f"{MAX_LONG_ANSWERS} long answers, and {victim} did not stream one through each route at once")


@dataclass
class Kill:
    """A replica killed (SIGKILL) under steady traffic and with long answers streaming, and what followed."""

    victim: str  # the killed replica's URL
    killed: float  # time.monotonic() just before the first SIGKILL
    dropped_after: float  # seconds until the controller no longer listed the dead worker
    gap_over: float  # time.monotonic() after which no request may fail any more
    gone: ProcessesGone
    answers: list[LongAnswer]
    streaming_at_kill: list[LongAnswer]
    flows: dict[str, Traffic]
    threads: list[threading.Thread]


@pytest.fixture(scope="module")
def killed_replica(stack: Stack) -> Iterator[Kill]:
    """Kills the second replica under traffic once for this module's tests, and records what happened; at the
    end, waits until the replica is back, registered, as the rest of the session expects the stack."""
    victim = stack.worker_urls[1]
    openai_body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    flows = {
        "openai": Traffic(lambda client: client.post("/v1/completions", json=openai_body)),
        "worker": Traffic(lambda client: client.post(f"/api/{MODEL}/worker_generate", json=completion())),
    }
    answers, threads = start_long_answers(stack, victim)
    try:
        threads += start_traffic(flows.values(), stack)
        processes = worker_processes(int(victim.rsplit(":", 1)[1]))
        killed = time.monotonic()  # before the first signal: a request the first one fails may end before the last
        for process in processes:
            process.send_signal(signal.SIGKILL)
        streaming_at_kill = [answer for answer in answers if not answer.ended_at]
        gone = ProcessesGone(processes)
        wait_until(
            lambda: f"{victim}/api" not in stack.registered_workers(),
            killed + HEART_BEAT_EXPIRATION + 3 - time.monotonic(),
            "the controller to drop the dead worker",
            interval=0.2,
        )
        dropped_after = time.monotonic() - killed
        gap_over = killed + SETTLE_SECONDS
        wait_until_each_sent(flows.values(), after=gap_over)
    finally:
        stop_all(flows.values(), threads, timeout=120)
    yield Kill(victim, killed, dropped_after, gap_over, gone, answers, streaming_at_kill, flows, threads)
    wait_until(lambda: f"{victim}/api" in stack.registered_workers(), RESTART_TIMEOUT, "the replica to come back", 1)


def test_killing_a_replica_under_traffic_loses_at_most_the_requests_it_was_serving(
    stack: Stack, killed_replica: Kill, record_property: Callable[[str, object], None]
) -> None:
    kill = killed_replica
    assert not any(thread.is_alive() for thread in kill.threads), "a request hung"
    kill.gone.join(timeout=PROCESSES_GONE_BOUND)
    record_property("killed_processes_gone_after_s", round(kill.gone.at - kill.killed, 2))
    assert not kill.gone.alive, f"still there {PROCESSES_GONE_BOUND} s after SIGKILL: {kill.gone.alive}"
    record_property("controller_dropped_dead_worker_after_s", round(kill.dropped_after, 2))
    for number, answer in enumerate(kill.answers):
        where = "the killed replica" if answer.replica == kill.victim else "the other replica"
        ended = f"ended {answer.ended_at - kill.killed:.2f} s after the kill"
        record_property(f"long_answer_{number}_{answer.route}", f"on {where}: {answer.outcome}, {ended}")
        if answer.replica == kill.victim and answer in kill.streaming_at_kill:  # ends with an error or cut, at once
            assert answer.outcome != "complete", f"{answer.route}: an answer from a killed replica"
            assert answer.ended_at - kill.killed < STREAM_END_BOUND, f"{answer.route}: {answer.outcome}, ended too late"
        elif answer.replica != kill.victim:
            assert answer.outcome == "complete", f"{answer.route} on the surviving replica: {answer.outcome}"
    cut = {answer.route for answer in kill.streaming_at_kill if answer.replica == kill.victim}
    assert cut == {"/api", "/v1"}, f"only {cut} still streamed on the killed replica: nothing shown for the rest"
    for name, flow in kill.flows.items():
        record_property(f"{name}_requests", len(flow.results))
        record_property(f"{name}_failures", flow.failures())  # in flight on the victim, or sent in the gap
        assert flow.sent(before=kill.killed) > 0, f"{name}: no traffic before the kill"
        assert flow.failures(answered_before=kill.killed) == [], f"{name} failed before the kill"
        assert flow.failures(sent_after=kill.gap_over) == [], f"{name} still failing after the gap"
    assert httpx.get(f"{stack.worker_urls[0]}/health").status_code == 200


def test_the_killed_replica_is_restarted_registered_and_used_again(stack: Stack, killed_replica: Kill) -> None:
    victim = killed_replica.victim
    wait_until(lambda: f"{victim}/api" in stack.registered_workers(), RESTART_TIMEOUT, "the replica to come back", 1)
    # The router learns it from the controller, then admits it once its health check passes (every 0.5 s).
    wait_until(lambda: stack.replica_status().get(victim) is True, 10, "the router to admit the replica again")
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 64, "temperature": 0}
    busy: set[str] = set()
    with stack.client(timeout=120) as client:
        requests = [
            threading.Thread(target=client.post, args=("/v1/completions",), kwargs={"json": body}) for _ in range(4)
        ]
        for request in requests:
            request.start()
        while any(request.is_alive() for request in requests):
            busy |= {url for url in stack.worker_urls if stack.worker_queue_length(url)}
            time.sleep(0.05)  # sampling the replicas' queues while the requests run, not a wait for an event
    assert victim in busy, "the router did not send anything to the restarted replica"
