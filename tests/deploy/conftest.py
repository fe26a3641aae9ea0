"""The production deployment, for real: docker-compose.yml brought up by `docker compose` under a Docker
engine, once for the tests of this folder.

The engine and the images are tests/docker_engine.py's (Debian's `dockerd`, started when none answers;
every image built offline by scripts/docker-images.sh). The compose project runs the production file
unedited, plus docker-compose.cpu-test.yml for what a test machine cannot have (a GPU, Let's Encrypt).
Traefik serves a certificate of the test's own CA, which every client here verifies. The stack requires
an API key, runs the default model in two replicas, a second model under a dotted name and the packaged
embedding model, and is torn
down (`docker compose down --volumes`) when the folder's tests are over.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llm_ops.frontdoor.certs import TLSFiles, ensure_certificates
from llm_ops.frontdoor.traefik import certificate_config, write_yaml_atomically
from llm_ops.worker.launch import CONTAINER_PORT
from tests.conftest import free_port
from tests.docker_engine import COMPOSE, IMAGE, ROOT, OnLocalhostPorts, build_images, docker_engine_running

COMPOSE_FILES = [ROOT / "docker-compose.yml", Path(__file__).with_name("docker-compose.cpu-test.yml")]
PROJECT = "llm-ops-test"  # not llm-ops: a production stack on the same engine is left alone
MODEL_SERVICE = "smollm2-135m-instruct"
DOTTED_SERVICE = "smollm2-135m-instruct-v2-0"  # the override's second model
DOTTED_MODEL = "SmolLM2-135M-Instruct-v2.0"
EMBEDDING_SERVICE = "all-minilm-l6-v2"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
REPLICAS = 2
SERVICE_KEY = "svc-llm-ops-deploy-test-0123456789"
SERVICES = ["traefik", "controller", "router", MODEL_SERVICE, DOTTED_SERVICE, EMBEDDING_SERVICE]
API_KEY = "sk-llm-ops-deploy-0123456789"
CONTAINER_DYNAMIC_DIR = Path("/etc/traefik/dynamic")  # where the compose file mounts Traefik's dynamic folder
START_TIMEOUT = 600.0  # four engines start at once on two cores (about 1.5 min, -O0); health checks run every 30 s
STOP_TIMEOUT = 120


@pytest.fixture(scope="package")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with docker_engine_running(tmp_path_factory.mktemp("dockerd") / "dockerd.log"):
        yield


@pytest.fixture(scope="package")
def images(docker_engine: None) -> None:
    build_images()


@dataclass(frozen=True)
class Deployment(OnLocalhostPorts):
    """The compose project PROJECT on free host ports, and how tests reach it. Its state_dir holds Traefik's
    dynamic folder (the repository's, plus the certificate) and the CA."""

    admin_port: int
    api_key: str = API_KEY
    service_key: str = SERVICE_KEY

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def dynamic_dir(self) -> Path:
        return self.state_dir / "dynamic"

    @property
    def ca_file(self) -> Path:
        return TLSFiles.in_dir(self.dynamic_dir / "tls").ca_file

    def environment(self) -> dict[str, str]:
        """What `docker compose` interpolates into the files: the production .env's variables, and the override's."""
        return os.environ | {
            "COMPOSE_PROFILES": "smoke",  # the default model's profile: ps, stop and down see its containers too
            "LLM_OPS_DOMAIN": "localhost",
            "ACME_EMAIL": "tests@llm-ops.invalid",
            "ACME_CA_SERVER": "https://127.0.0.1:9/directory",  # never asked: the domain has a certificate
            "HTTPS_PORT": str(self.https_port),
            "HTTP_PORT": str(self.http_port),
            "ADMIN_PORT": str(self.admin_port),
            "LLM_OPS_API_KEYS": self.api_key,
            "LLM_OPS_SERVICE_KEY": SERVICE_KEY,
            "LLM_OPS_TEST_IMAGE": IMAGE,
            "LLM_OPS_TEST_DYNAMIC_DIR": str(self.dynamic_dir),
        }

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        files = [arg for path in COMPOSE_FILES for arg in ("--file", str(path))]
        command = [str(COMPOSE), "--project-name", PROJECT, *files, *args]
        done = subprocess.run(command, capture_output=True, text=True, env=self.environment(), timeout=timeout)
        output = f"{done.stdout[-3000:]}{done.stderr[-3000:]}"
        assert done.returncode == 0, f"docker compose {' '.join(args)}: exit {done.returncode}\n{output}"
        return done

    def up(self) -> None:
        """Every service running and healthy (Traefik routes to healthy containers only); quick when they are."""
        self.compose(
            "up", "--detach", "--no-build", "--wait", "--wait-timeout", str(int(START_TIMEOUT)),
            "--scale", f"{MODEL_SERVICE}={REPLICAS}", *SERVICES,
            timeout=START_TIMEOUT + 60,
        )  # fmt: skip

    def save_logs(self) -> None:
        """Every container's log, to state_dir/compose.log, while they are still there to ask."""
        logs = self.compose("logs", "--no-color", "--timestamps").stdout
        if logs:
            (self.state_dir / "compose.log").write_text(logs)

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "--quiet", service).stdout.split()

    def inspect(self, container: str) -> dict[str, Any]:
        done = subprocess.run(["docker", "inspect", container], capture_output=True, text=True, check=True)
        details: dict[str, Any] = json.loads(done.stdout)[0]
        return details

    def worker_url(self, container: str, port: int = CONTAINER_PORT) -> str:
        """The server in `container` (a worker, unless `port` says otherwise), at its address on the project's
        network (the host can reach it there)."""
        networks = self.inspect(container)["NetworkSettings"]["Networks"]
        return f"http://{next(iter(networks.values()))['IPAddress']}:{port}"


def write_traefik_dynamic_dir(target: Path) -> None:
    """The repository's traefik/dynamic, plus the test CA's certificate for localhost, as Traefik sees them."""
    shutil.copytree(ROOT / "traefik" / "dynamic", target)
    ensure_certificates(target / "tls", ["localhost", "127.0.0.1"])
    inside = TLSFiles.in_dir(CONTAINER_DYNAMIC_DIR / "tls")
    write_yaml_atomically(target / "certificates.yml", certificate_config(inside))


@pytest.fixture(scope="package")
def deployment(images: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    state_dir = tmp_path_factory.mktemp("deployment")
    deployed = Deployment(state_dir, https_port=free_port(), http_port=free_port(), admin_port=free_port())
    write_traefik_dynamic_dir(deployed.dynamic_dir)
    try:
        deployed.up()
        yield deployed
    finally:
        deployed.save_logs()
        deployed.compose("down", "--volumes", "--remove-orphans", "--timeout", "60", timeout=STOP_TIMEOUT)


@pytest.fixture(scope="module")
def deployed(deployment: Deployment) -> Deployment:
    """The deployment, brought back up if an earlier module stopped or killed part of it."""
    deployment.up()
    return deployment
