"""The deployment on a two-node Docker Swarm on one machine, for real, once for the tests of this folder.

The first node is the engine the deployment test uses (tests/docker_engine.py), the swarm's manager. The second
is a Docker engine of its own in a network namespace (`SecondNode`): a veth pair joins the namespace to the host,
each side with a private address; its dockerd has its own data root, exec root, socket and hostname, and joins the
swarm as a worker. Its images come from the first engine (`docker save | docker load`: no registry). Swarm's
overlay network carries the services' traffic between the two (VXLAN between the veth addresses).

The stack is docker-compose.yml and deploy/swarm/docker-stack.yml, rendered by scripts/swarm-stack.sh as an
operator does (docs/deployment.md, "Docker Swarm"), plus docker-stack.cpu-test.yml for what this machine cannot
have. Both nodes are labelled gpu=true, so the production placement holds, and the default model's two replicas
spread one on each node. At the end everything started here is gone: the stack, its volumes, the secrets, the
second engine and its folder, the namespace and the interfaces; the first engine has left the swarm, and is
stopped if it was started here. The package's last teardown checks it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from llm_ops.frontdoor.certs import TLSFiles, ensure_certificates
from llm_ops.frontdoor.traefik import certificate_config, write_yaml_atomically
from llm_ops.worker.launch import CONTAINER_PORT
from tests.conftest import free_port, still_running, wait_until
from tests.docker_engine import (
    COMPOSE,
    DEBIAN_IMAGE,
    ENGINE_START_TIMEOUT,
    ENGINE_STOP_TIMEOUT,
    IMAGE,
    ROOT,
    OnLocalhostPorts,
    build_images,
    docker_engine_running,
    engine_answers,
)

STACK = "llm-ops-swarm-test"  # neither production's llm-ops nor the compose test's llm-ops-test
NETWORK = f"{STACK}-models"  # docker-compose.yml names the network after the project
STACK_OVERRIDE = Path(__file__).with_name("docker-stack.cpu-test.yml")
MODEL_SERVICE = "smollm2-135m-instruct"
REPLICAS = 2
ROUTERS = 2
ROUTER_PORT = 8000
API_KEY = "sk-llm-ops-swarm-test-0123456789"
SERVICE_KEY = "svc-llm-ops-swarm-test-0123456789"
KEY_SECRETS = {"llm-ops-api-keys": API_KEY, "llm-ops-service-key": SERVICE_KEY}  # deploy/swarm/docker-stack.yml's
NAMESPACE = "llm-ops-node2"
NODE_HOSTNAME = "llm-ops-node2"
HOST_INTERFACE = "llmops-n2-host"  # the veth pair; an interface's name has at most 15 characters
NODE_INTERFACE = "llmops-n2-node"
MANAGER_ADDRESS = "10.199.0.1"  # the host's side, which the manager advertises
NODE_ADDRESS = "10.199.0.2"
PREFIX_LENGTH = 30
CGROUP_PARENT = "llm-ops-node2"  # the second engine's containers' cgroups: /llm-ops-node2 in each hierarchy
PROBE = f"{STACK}-probe"
START_TIMEOUT = 900.0  # two engines, on two nodes sharing two cores (about 2 min); model health checks every 30 s
STOP_TIMEOUT = 180.0


def run(
    command: list[str], *, timeout: float = 120, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(command)}: exit {done.returncode}\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done


def docker(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`docker` against the first engine, the manager."""
    return run(["docker", *args], **kwargs)


@dataclass
class SecondNode:
    """A second Docker engine on this machine, in network namespace NAMESPACE with its own state folder."""

    state_dir: Path
    dockerd: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.state_dir / "dockerd.log"

    def environment(self) -> dict[str, str]:
        return os.environ | {"DOCKER_HOST": f"unix://{self.state_dir}/docker.sock"}

    def docker(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return run(["docker", *args], env=self.environment(), **kwargs)

    def answers(self) -> bool:
        return engine_answers(self.environment())

    def start(self) -> float:
        """Seconds until its dockerd answers. In the namespace's network only (`ip netns exec` would also
        remount /sys, hiding the cgroups dockerd needs), under a hostname of its own (its node's name)."""
        dockerd = [
            "dockerd", f"--config-file={self.state_dir / 'daemon.json'}", f"--data-root={self.state_dir / 'data'}",
            f"--exec-root={self.state_dir / 'exec'}", f"--pidfile={self.state_dir / 'dockerd.pid'}",
            f"--host=unix://{self.state_dir}/docker.sock", f"--cgroup-parent=/{CGROUP_PARENT}",
        ]  # fmt: skip
        (self.state_dir / "daemon.json").write_text("{}")  # not /etc/docker/daemon.json, the first engine's
        in_namespace = ["nsenter", f"--net=/run/netns/{NAMESPACE}", "unshare", "--uts", "sh", "-c"]
        script = f'hostname {NODE_HOSTNAME} && exec "$@"'
        with self.log.open("ab") as output:
            self.dockerd = subprocess.Popen(
                [*in_namespace, script, "sh", *dockerd], stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        dockerd_process = self.dockerd
        return wait_until(
            lambda: still_running(dockerd_process, self.log) and self.answers(),
            ENGINE_START_TIMEOUT,
            "the second node's dockerd to answer",
            0.5,
        )

    def stop(self) -> None:
        if self.dockerd is not None and self.dockerd.poll() is None:
            self.dockerd.terminate()
            try:
                self.dockerd.wait(timeout=ENGINE_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.dockerd.kill()  # the teardown goes on: what it leaves is killed and cleaned up after
                self.dockerd.wait(timeout=30)

    def lose(self) -> None:
        """The node's loss: its link cut, then SIGKILL to every process of it (dockerd, containerd, the
        containers), as when a machine loses power. Its containers' mounts and cgroups stay for the teardown."""
        run(["ip", "link", "set", HOST_INTERFACE, "down"])
        kill_processes_of_the_node()
        if self.dockerd is not None:
            self.dockerd.wait(timeout=30)


def processes_of_the_node() -> set[int]:
    """The engine's processes (in the namespace's network) and its containers' (in its cgroups, each container
    in a network namespace of its own)."""
    pids = {int(pid) for pid in run(["ip", "netns", "pids", NAMESPACE], check=False).stdout.split()}
    for procs in (Path("/sys/fs/cgroup/pids") / CGROUP_PARENT).rglob("cgroup.procs"):
        pids |= {int(pid) for pid in procs.read_text().split()}
    return pids


def kill_processes_of_the_node() -> None:
    for pid in processes_of_the_node():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def create_namespace() -> None:
    for command in (
        ["ip", "netns", "add", NAMESPACE],
        ["ip", "link", "add", HOST_INTERFACE, "type", "veth", "peer", "name", NODE_INTERFACE],
        ["ip", "link", "set", NODE_INTERFACE, "netns", NAMESPACE],
        ["ip", "addr", "add", f"{MANAGER_ADDRESS}/{PREFIX_LENGTH}", "dev", HOST_INTERFACE],
        ["ip", "link", "set", HOST_INTERFACE, "up"],
        ["ip", "-n", NAMESPACE, "addr", "add", f"{NODE_ADDRESS}/{PREFIX_LENGTH}", "dev", NODE_INTERFACE],
        ["ip", "-n", NAMESPACE, "link", "set", NODE_INTERFACE, "up"],
        ["ip", "-n", NAMESPACE, "link", "set", "lo", "up"],
    ):
        run(command)


def delete_namespace() -> None:
    """The namespace, and with it the node's side of the veth pair, which takes the host's side along."""
    run(["ip", "netns", "delete", NAMESPACE], check=False)
    run(["ip", "link", "delete", HOST_INTERFACE], check=False)


def unmount_below(folder: Path) -> None:
    """What a killed engine left mounted there (its containers' layers, secrets, network namespaces)."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{folder}/")), key=len, reverse=True):
        run(["umount", "--lazy", mount], check=False)


def remove_cgroups(parent: str) -> None:
    """The second engine's containers' cgroups, deepest first, once the last of their processes has exited (a
    killed engine takes a moment to free its memory)."""
    tops = [hierarchy / parent for hierarchy in Path("/sys/fs/cgroup").iterdir() if (hierarchy / parent).is_dir()]
    wait_until(lambda: not processes_of_the_node(), 60, "the second node's processes to exit")
    for top in tops:
        for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            folder.rmdir()
        top.rmdir()


def interfaces() -> set[str]:
    """The host's network interfaces (its namespace's)."""
    return {line.split(":")[1].strip().split("@")[0] for line in run(["ip", "-o", "link", "show"]).stdout.splitlines()}


def networks() -> set[str]:
    return set(docker("network", "ls", "--format", "{{.Name}}").stdout.split())


@dataclass(frozen=True)
class Before:
    """What the first engine and the host had before the test, which the teardown leaves as it found it."""

    interfaces: set[str]
    networks: set[str]


def leftovers(node: SecondNode, before: Before) -> list[str]:
    """What the package's teardown must not leave behind."""
    found = [f"interface {name}" for name in sorted(interfaces() - before.interfaces)]
    if NAMESPACE in run(["ip", "netns", "list"]).stdout.split():
        found.append(f"network namespace {NAMESPACE}")
    if node.state_dir.exists():
        found.append(f"the second engine's folder {node.state_dir}")
    if processes_of_the_node() or (node.dockerd is not None and node.dockerd.poll() is None):
        found.append("a process of the second node")
    if any((hierarchy / CGROUP_PARENT).exists() for hierarchy in Path("/sys/fs/cgroup").iterdir()):
        found.append(f"cgroup {CGROUP_PARENT}")
    if docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() != "inactive":
        found.append("the first engine in a swarm")
    found += [f"volume {v}" for v in docker("volume", "ls", "--quiet").stdout.split() if v.startswith(STACK)]
    found += [f"network {name}" for name in sorted(networks() - before.networks)]
    return found


@dataclass
class Timings:
    """Seconds each step took, for docs/deployment.md: in the run's summary and recorded as properties."""

    seconds: dict[str, float] = field(default_factory=dict)

    def took(self, name: str, started: float) -> None:
        self.seconds[name] = round(time.monotonic() - started, 1)


MEASURED = pytest.StashKey[Timings]()


@pytest.fixture(scope="package")
def timings(
    request: pytest.FixtureRequest, record_testsuite_property: Callable[[str, object], None]
) -> Iterator[Timings]:
    measured = request.config.stash[MEASURED] = Timings()
    yield measured
    for name, seconds in measured.seconds.items():
        record_testsuite_property(name, seconds)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """The timings, printed here: what a fixture's teardown writes is captured, and never shown when it passes."""
    measured = config.stash.get(MEASURED, None)
    if measured is not None:
        terminalreporter.write_line(f"two-node swarm, seconds: {json.dumps(measured.seconds)}")


@pytest.fixture(scope="package")
def first_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with docker_engine_running(tmp_path_factory.mktemp("dockerd") / "dockerd.log"):
        yield


@pytest.fixture(scope="package")
def swarm(first_engine: None, timings: Timings) -> Iterator[SecondNode]:
    """The first engine as the manager, the second node joined as a worker, both labelled gpu=true; all of it
    undone at the end, and checked."""
    if docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() != "inactive":
        pytest.fail("the engine is a swarm node already: this test makes its own swarm (`docker swarm leave --force`)")
    before = Before(interfaces(), networks())
    node = SecondNode(Path(tempfile.mkdtemp(prefix="llm-ops-node2.", dir="/tmp")))  # short: sockets' paths
    try:
        started = time.monotonic()
        create_namespace()
        node.start()
        timings.took("second_engine_start_s", started)
        started = time.monotonic()
        docker("swarm", "init", f"--advertise-addr={MANAGER_ADDRESS}", f"--listen-addr={MANAGER_ADDRESS}:2377")
        token = docker("swarm", "join-token", "--quiet", "worker").stdout.strip()
        node.docker("swarm", "join", f"--token={token}", f"--advertise-addr={NODE_ADDRESS}",
                    f"--listen-addr={NODE_ADDRESS}:2377", f"{MANAGER_ADDRESS}:2377")  # fmt: skip
        for node_id in docker("node", "ls", "--quiet").stdout.split():
            docker("node", "update", "--label-add", "gpu=true", node_id)
        timings.took("swarm_init_and_join_s", started)
        yield node
    finally:
        tear_down_swarm(node, before)
        left = leftovers(node, before)
        assert not left, f"left behind: {left}"


def left_the_swarm() -> bool:
    """Whether the first engine is out of the swarm, after asking it to leave (which can fail while a
    lost node's tasks are being rescheduled)."""
    docker("swarm", "leave", "--force", check=False)
    return docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() == "inactive"


def tear_down_swarm(node: SecondNode, before: Before) -> None:
    """The second node out of the swarm and stopped (its containers with it), then whatever a lost node left:
    its processes, mounts, folder and cgroups, the namespace and the veth pair; the first engine out of the
    swarm, without the bridge `swarm init` made (`leave` keeps it)."""
    if node.answers():
        node.docker("swarm", "leave", "--force", check=False, timeout=STOP_TIMEOUT)
    node.stop()
    kill_processes_of_the_node()
    wait_until(left_the_swarm, 60, "the first engine to leave the swarm", interval=2)
    if "docker_gwbridge" not in before.networks:
        docker("network", "rm", "docker_gwbridge", check=False)
    unmount_below(node.state_dir)
    run(["rm", "-rf", "--one-file-system", str(node.state_dir)], check=False)
    delete_namespace()
    remove_cgroups(CGROUP_PARENT)


@pytest.fixture(scope="package")
def images_on_both_nodes(swarm: SecondNode, timings: Timings) -> None:
    started = time.monotonic()
    build_images()
    timings.took("images_built_or_found_s", started)
    started = time.monotonic()
    save = subprocess.Popen(["docker", "save", IMAGE, DEBIAN_IMAGE], stdout=subprocess.PIPE)
    swarm.docker("load", "--quiet", stdin=save.stdout, timeout=900)
    assert save.wait(timeout=60) == 0, "docker save failed"
    timings.took("image_save_load_s", started)


@dataclass(frozen=True)
class Stack(OnLocalhostPorts):
    """The stack STACK, its front door on the first node's free ports, and what the tests ask of it."""

    node: SecondNode
    api_key: str = API_KEY
    service_key: str = SERVICE_KEY

    @property
    def tls_dir(self) -> Path:
        return self.state_dir / "tls"

    @property
    def ca_file(self) -> Path:
        return TLSFiles.in_dir(self.tls_dir).ca_file

    @property
    def cores_dir(self) -> Path:
        return self.state_dir / "engine-cores"

    def environment(self) -> dict[str, str]:
        """What scripts/swarm-stack.sh's Compose interpolates: the production .env's variables, and the override's."""
        return os.environ | {
            "COMPOSE": str(COMPOSE),
            "LLM_OPS_STACK": STACK,
            "COMPOSE_PROFILES": "smoke",  # the default model's profile
            "LLM_OPS_DOMAIN": "localhost",
            "ACME_EMAIL": "tests@llm-ops.invalid",
            "ACME_CA_SERVER": "https://127.0.0.1:9/directory",  # never asked: the domain has a certificate
            "HTTPS_PORT": str(self.https_port),
            "HTTP_PORT": str(self.http_port),
            "LLM_OPS_SERVICE_KEY": "unused",  # docker-compose.yml requires it; the stack takes the secret's
            "LLM_OPS_TEST_IMAGE": IMAGE,
            "LLM_OPS_TEST_TLS_DIR": str(self.tls_dir),
            "LLM_OPS_TEST_CORES_DIR": str(self.cores_dir),
        }

    def prepare(self) -> None:
        """The test CA's certificate for localhost and the file provider's configuration naming it as Docker
        secrets; the keys as the secrets docs/deployment.md creates; the machine's folder of core claims."""
        ensure_certificates(self.tls_dir, ["localhost", "127.0.0.1"])
        secrets = Path("/run/secrets")
        in_traefik = TLSFiles(self.ca_file, secrets / "llm-ops-tls-certificate", secrets / "llm-ops-tls-key", Path())
        write_yaml_atomically(self.tls_dir / "certificates.yml", certificate_config(in_traefik))
        for name, value in KEY_SECRETS.items():
            docker("secret", "create", name, "-", input=value)
        self.cores_dir.mkdir()
        self.cores_dir.chmod(0o1777)  # the workers' user claims cores there, whichever node it runs on

    def deploy(self) -> None:
        """The rendered stack, but the models this machine cannot run (GPU only, weights to download), which
        would stay pending: as `docker compose up SERVICE...` picks services, which `docker stack` cannot."""
        rendered = json.loads(run(["bash", str(ROOT / "scripts" / "swarm-stack.sh"), "--file", str(STACK_OVERRIDE)],
                                  env=self.environment()).stdout)  # fmt: skip
        rendered["services"] = {name: rendered["services"][name] for name in expected_services()}
        (self.state_dir / "stack.json").write_text(json.dumps(rendered, indent=2))
        docker("stack", "deploy", "--resolve-image=never", "--compose-file=-", STACK, input=json.dumps(rendered))

    def replicas(self) -> dict[str, str]:
        """Each service's running and wanted tasks, as `docker service ls` shows them ("2/2")."""
        listed = docker("service", "ls", f"--filter=label=com.docker.stack.namespace={STACK}",
                        "--format", "{{.Name}} {{.Replicas}}").stdout  # fmt: skip
        return dict(line.removeprefix(f"{STACK}_").split(" ", 1) for line in listed.splitlines())

    def converged(self, wanted: dict[str, int]) -> bool:
        return self.replicas() == {service: f"{count}/{count}" for service, count in wanted.items()}

    def tasks(self, service: str) -> list[dict[str, str]]:
        """The service's tasks that run (healthy, for a service with a health check): node, container."""
        listed = docker("service", "ps", f"{STACK}_{service}", "--filter=desired-state=running", "--no-trunc",
                        "--format", "{{json .}}").stdout  # fmt: skip
        tasks = [json.loads(line) for line in listed.splitlines()]
        return [task for task in tasks if task["CurrentState"].startswith("Running")]

    def task_nodes(self, service: str) -> list[str]:
        return sorted(task["Node"] for task in self.tasks(service))

    def containers_on_second_node(self, service: str) -> list[dict[str, Any]]:
        ids = self.node.docker("ps", "--quiet", f"--filter=label=com.docker.swarm.service.name={STACK}_{service}")
        if not ids.stdout.split():
            return []
        return list(json.loads(self.node.docker("inspect", *ids.stdout.split()).stdout))

    def ask_each(self, host: str, port: int, path: str) -> dict[str, str]:
        """What each address `host` resolves to on the overlay answers at `path` (with the API key): asked from
        the probe, a container on the attachable network (the host has no address there)."""
        done = docker("exec", PROBE, "python3", "-c", ASK_EACH, host, str(port), path, self.api_key, check=False)
        if done.returncode != 0:
            return {}
        answers: dict[str, str] = json.loads(done.stdout)
        return answers

    def router_views(self) -> list[set[str]]:
        """For each router instance that answers, the replicas (their URLs, http://HOSTNAME:21002) it sends
        requests to."""
        views = []
        for answer in self.ask_each("tasks.router", ROUTER_PORT, "/replicas").values():
            with contextlib.suppress(ValueError, KeyError):
                views.append({replica["url"] for replica in json.loads(answer)["replicas"] if replica["admitted"]})
        return views

    def admitted_by_both_routers(self) -> set[str]:
        views = self.router_views()
        return set.intersection(*views) if len(views) == ROUTERS else set()

    def requests_served(self, address: str) -> float:
        """How many requests the worker at `address` has answered (vLLM's counter), asked of the worker itself."""
        text = self.ask_each(address, CONTAINER_PORT, "/metrics").get(address, "")
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "vllm:request_success_total"
        )

    def save_logs(self) -> None:
        for service in self.replicas():
            with contextlib.suppress(subprocess.TimeoutExpired):  # a lost node's tasks' logs may never come
                logs = docker("service", "logs", "--timestamps", f"{STACK}_{service}", check=False, timeout=60)
                (self.state_dir / f"{service}.log").write_text(logs.stdout + logs.stderr)


# Run in the probe with its Python (the Debian image's, no packages): host, port, path, key -> {address: body}.
ASK_EACH = """
import json, socket, sys, urllib.request
host, port, path, key = sys.argv[1:5]
answers = {}
for address in sorted({info[4][0] for info in socket.getaddrinfo(host, int(port), proto=socket.IPPROTO_TCP)}):
    request = urllib.request.Request(f"http://{address}:{port}{path}", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            answers[address] = response.read().decode()
    except OSError as error:
        answers[address] = f"error: {error}"
print(json.dumps(answers))
"""


def expected_services() -> dict[str, int]:
    return {"traefik": 1, "controller": 1, "router": ROUTERS, MODEL_SERVICE: REPLICAS}


@pytest.fixture(scope="package")
def stack(
    swarm: SecondNode, images_on_both_nodes: None, timings: Timings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    deployed = Stack(tmp_path_factory.mktemp("stack"), https_port=free_port(), http_port=free_port(), node=swarm)
    try:
        deployed.prepare()
        started = time.monotonic()
        deployed.deploy()
        docker("run", "--detach", "--rm", f"--name={PROBE}", f"--network={NETWORK}", DEBIAN_IMAGE, "sleep", "infinity")
        wait_until(lambda: deployed.converged(expected_services()), START_TIMEOUT,
                   lambda: f"every service's tasks to run and be healthy: {deployed.replicas()}", 2)  # fmt: skip
        wait_until(
            lambda: len(deployed.admitted_by_both_routers()) == REPLICAS, 60, "both routers to admit both replicas"
        )
        timings.took("stack_up_s", started)
        yield deployed
    finally:
        deployed.save_logs()
        remove_stack(deployed)


Engine = Callable[..., subprocess.CompletedProcess[str]]  # `docker` against one of the two engines


def stack_containers(engine: Engine) -> list[str]:
    """The stack's containers on one engine, exited ones too: they hold its volumes until Swarm removes them."""
    return engine("ps", "--all", "--quiet", f"--filter=label=com.docker.stack.namespace={STACK}").stdout.split()


def stack_volumes(engine: Engine) -> list[str]:
    return engine("volume", "ls", "--quiet", f"--filter=label=com.docker.stack.namespace={STACK}").stdout.split()


def remove_stack(deployed: Stack) -> None:
    """The stack, the probe, the secrets and the stack's volumes on both nodes, once their containers are gone."""
    docker("rm", "--force", PROBE, check=False)
    docker("stack", "rm", STACK, check=False)
    engines: list[Engine] = [docker, deployed.node.docker] if deployed.node.answers() else [docker]
    for engine in engines:
        wait_until(lambda e=engine: not stack_containers(e), STOP_TIMEOUT, "the stack's containers to go")
        volumes = stack_volumes(engine)
        if volumes:
            engine("volume", "rm", *volumes, check=False)
    wait_until(lambda: NETWORK not in networks(), 60, "the stack's network to go")
    for name in KEY_SECRETS:
        docker("secret", "rm", name, check=False)
