"""What a user of the deployment on a two-node swarm sees, through Traefik on the first node (TLS verified
against the test CA, an API key sent): the README's curl examples, /v1 with the official client, keys refused,
a replica on the second node answering over the overlay network. Then the second node drained under traffic
(its replica moves to the first; no request fails after the drain's grace), and lost (its link cut and every
process of it killed; the replicas on the first node carry on)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import httpx
import openai
import pytest

from llm_ops.worker.launch import CONTAINER_PORT
from tests.conftest import answers_of, pointed_at, readme_curl_examples, run_bash, wait_until
from tests.integration.conftest import MODEL, assert_every_api_refuses, chat
from tests.swarm.conftest import (
    MODEL_SERVICE,
    NETWORK,
    NODE_HOSTNAME,
    REPLICAS,
    ROUTERS,
    STACK,
    START_TIMEOUT,
    Stack,
    Timings,
    docker,
)
from tests.traffic import flowing, flows_through_both_apis, wait_until_each_sent

pytestmark = pytest.mark.swarm
MANAGER_NODE = socket.gethostname()  # the first engine's node is named after the machine
# Seconds after the drain (or the loss) from which no request may fail: a draining worker's /health says 503 at
# once and the routers check every 0.5 s; a lost one fails a check within 1.5 s. Traefik checks the routers every
# 2 s. With a margin.
GRACE = 10.0
CONCURRENT = 4  # requests at once: the routers' least-loaded choice then gives both replicas some
FASTCHAT_EXAMPLES = [example for example in readme_curl_examples() if "/worker_generate" in example]


def second_node_id() -> str:
    listed = docker("node", "ls", "--format", "{{.ID}} {{.Hostname}}").stdout.split("\n")
    return next(line.split()[0] for line in listed if line.endswith(f" {NODE_HOSTNAME}"))


def replica_on_the_second_node(stack: Stack) -> tuple[str, str]:
    """The URL the routers know the second node's replica by (its hostname), and its address on the overlay."""
    containers = stack.containers_on_second_node(MODEL_SERVICE)
    assert len(containers) == 1, f"{len(containers)} replicas on the second node"
    hostname = containers[0]["Config"]["Hostname"]
    address = containers[0]["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
    return f"http://{hostname}:{CONTAINER_PORT}", address


Event = Callable[[], tuple[float, dict[str, float]]]  # does something; when it began, and seconds measured


def survived(stack: Stack, event: Event, record_property: Callable[[str, object], None]) -> dict[str, float]:
    """Traffic on both APIs while `event` happens and until each flow has sent requests GRACE seconds after it
    began; none of those fails. Records how many were sent and failed, and what `event` measured."""
    flows = flows_through_both_apis()
    with flowing(flows.values(), stack):
        began, measured = event()
        wait_until_each_sent(flows.values(), after=max(time.monotonic(), began + GRACE), timeout=300)
    for name, seconds in measured.items():
        record_property(name, round(seconds, 1))
    for name, flow in flows.items():
        record_property(f"{name}_requests", len(flow.results))
        record_property(f"{name}_failed", len(flow.failures()))
        record_property(f"{name}_failures_seen", sorted(set(flow.failures()))[:3])
        assert flow.sent(before=began) > 0, f"{name}: no traffic before it began"
        assert flow.failures(sent_after=began + GRACE) == [], f"{name}: a request sent {GRACE} s after it failed"
    return measured


def set_aside_by_the_routers(stack: Stack, url: str) -> bool:
    return all(url not in view for view in stack.router_views())


def test_traefik_and_the_controller_run_on_the_manager_and_a_replica_and_a_router_on_each_node(stack: Stack) -> None:
    assert stack.task_nodes("traefik") == [MANAGER_NODE]
    assert stack.task_nodes("controller") == [MANAGER_NODE]
    assert stack.task_nodes(MODEL_SERVICE) == sorted([MANAGER_NODE, NODE_HOSTNAME])
    assert stack.task_nodes("router") == sorted([MANAGER_NODE, NODE_HOSTNAME])


def test_a_replica_on_the_second_node_answers_through_traefik_over_verified_tls(stack: Stack) -> None:
    url, address = replica_on_the_second_node(stack)
    assert url in stack.admitted_by_both_routers()
    before = stack.requests_served(address)
    answers: list[httpx.Response] = []

    def ask() -> None:
        with stack.client() as client:  # verifies the certificate against the test CA
            answers.append(client.post(f"/api/{MODEL}/worker_generate", json=chat(max_new_tokens=8)))

    for _ in range(5):  # rounds of CONCURRENT requests, until the second node's replica has answered some
        threads = [threading.Thread(target=ask) for _ in range(CONCURRENT)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        if stack.requests_served(address) > before:
            break
    assert answers and all(a.status_code == 200 and "Paris" in a.json()["text"] for a in answers), answers
    assert stack.requests_served(address) > before, "the second node's replica answered none"


@pytest.mark.parametrize("example", FASTCHAT_EXAMPLES, ids=["chat", "completion"])
def test_the_readmes_curl_examples_answer_through_the_first_nodes_traefik(stack: Stack, example: str) -> None:
    answers = answers_of(run_bash(pointed_at(example, stack)))
    assert answers and all(answer["error_code"] == 0 for answer in answers), answers
    assert answers[-1]["finish_reason"] in ("stop", "length") and str(answers[-1]["text"]).strip()


def test_the_openai_client_lists_the_model_and_chats_through_v1(stack: Stack) -> None:
    question = [{"role": "user", "content": "What is the capital of France?"}]
    with httpx.Client(verify=stack.tls(), timeout=120) as http:
        client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.api_key, http_client=http, max_retries=0)
        assert MODEL in {model.id for model in client.models.list()}
        answer = client.chat.completions.create(model=MODEL, messages=question, temperature=0)  # type: ignore[arg-type]
    assert "Paris" in (answer.choices[0].message.content or "")


@pytest.mark.parametrize("key", [None, "sk-llm-ops-wrong-5555555555"], ids=["no key", "wrong key"])
def test_requests_without_a_valid_key_are_refused_with_the_keys_from_the_secrets(stack: Stack, key: str | None) -> None:
    assert_every_api_refuses(stack, key)


def test_draining_the_second_node_moves_its_replica_without_failed_requests_after_the_grace(
    stack: Stack, timings: Timings, record_property: Callable[[str, object], None]
) -> None:
    url, _ = replica_on_the_second_node(stack)

    def drain() -> tuple[float, dict[str, float]]:
        drained = time.monotonic()
        docker("node", "update", "--availability=drain", second_node_id())
        wait_until(lambda: set_aside_by_the_routers(stack, url), 30, "the routers to set the replica aside")
        set_aside = time.monotonic() - drained
        wait_until(
            lambda: (
                stack.task_nodes(MODEL_SERVICE) == [MANAGER_NODE] * REPLICAS
                and stack.task_nodes("router") == [MANAGER_NODE] * ROUTERS
                and len(stack.admitted_by_both_routers()) == REPLICAS
            ),
            START_TIMEOUT,
            lambda: f"the replica and the router to run on the first node: {stack.replicas()}",
            interval=2,
        )
        return drained, {"set_aside_after_s": set_aside, "moved_after_s": time.monotonic() - drained}

    measured = survived(stack, drain, record_property)
    timings.seconds["drain_replica_moved_s"] = round(measured["moved_after_s"], 1)


def test_losing_the_second_node_is_survived_by_the_replicas_on_the_first(
    stack: Stack, timings: Timings, record_property: Callable[[str, object], None]
) -> None:
    """A third replica goes to the second node, active again; then the node is lost under traffic."""
    docker("node", "update", "--availability=active", second_node_id())
    docker("service", "scale", "--detach", f"{STACK}_{MODEL_SERVICE}={REPLICAS + 1}")
    wait_until(
        lambda: (
            NODE_HOSTNAME in stack.task_nodes(MODEL_SERVICE) and len(stack.admitted_by_both_routers()) == REPLICAS + 1
        ),
        START_TIMEOUT,
        lambda: f"a third replica on the second node, admitted by both routers: {stack.replicas()}",
        interval=2,
    )
    url, _ = replica_on_the_second_node(stack)

    def lose() -> tuple[float, dict[str, float]]:
        lost = time.monotonic()
        stack.node.lose()
        wait_until(lambda: set_aside_by_the_routers(stack, url), 30, "the routers to set the replica aside")
        set_aside = time.monotonic() - lost
        wait_until(
            lambda: docker("node", "inspect", "--format", "{{.Status.State}}", NODE_HOSTNAME).stdout.strip() == "down",
            120,
            "the manager to see the second node down",
        )
        return lost, {"set_aside_after_s": set_aside, "node_down_after_s": time.monotonic() - lost}

    measured = survived(stack, lose, record_property)
    timings.seconds["loss_node_down_s"] = round(measured["node_down_after_s"], 1)
