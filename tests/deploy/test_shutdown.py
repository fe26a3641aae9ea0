"""`docker compose stop` lets answers in flight finish, through both routes, and every container exits 0;
`docker compose down --volumes` then leaves no container, network or volume of the project behind.
These run last (the folder's modules run in name order); a module after them brings the stack back."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable

import pytest

from tests.deploy.conftest import PROJECT, Deployment
from tests.traffic import LongAnswer

pytestmark = pytest.mark.deploy
# Short enough to end within the drain (5 s) and the time answers in flight get (30 s), with three engines
# sharing two cores; a longer one is cut at the end of that time, with finish_reason "error".
ANSWER_TOKENS = 100


def test_compose_stop_lets_answers_in_flight_finish_and_every_container_exits_0(
    deployed: Deployment, record_property: Callable[[str, object], None]
) -> None:
    containers = deployed.compose("ps", "--quiet").stdout.split()
    answers = [LongAnswer("/api", ANSWER_TOKENS), LongAnswer("/v1", ANSWER_TOKENS)]
    threads = [threading.Thread(target=answer.run, args=(deployed,)) for answer in answers]
    for thread in threads:
        thread.start()
    for answer in answers:
        assert answer.started.wait(timeout=60), f"the long answer on {answer.route} did not start"
    stopping = time.monotonic()
    deployed.compose("stop", timeout=180)
    record_property("compose_stop_s", round(time.monotonic() - stopping, 2))
    for thread in threads:
        thread.join(timeout=60)
    for answer in answers:
        record_property(f"answer_{answer.route}_ended_after_stop_s", round(answer.ended_at - stopping, 2))
        assert answer.outcome == "complete", f"{answer.route}: {answer.outcome}"
    exits = {container: deployed.inspect(container)["State"] for container in containers}
    assert {container[:12]: state["ExitCode"] for container, state in exits.items()} == dict.fromkeys(
        [container[:12] for container in containers], 0
    ), exits


def test_compose_down_leaves_no_container_network_or_volume_behind(deployed: Deployment) -> None:
    deployed.save_logs()
    deployed.compose("down", "--volumes", "--timeout", "60", timeout=180)
    label = f"label=com.docker.compose.project={PROJECT}"
    for kind in (["ps", "--all"], ["network", "ls"], ["volume", "ls"]):
        listed = subprocess.run(["docker", *kind, "--quiet", "--filter", label], capture_output=True, text=True)
        assert listed.returncode == 0 and listed.stdout.split() == [], f"docker {' '.join(kind)}: {listed.stdout}"
