"""Shared test helpers. Integration fixtures (the real stack) live in tests/integration/conftest.py."""

from __future__ import annotations

import contextlib
import socket
import ssl
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports_in_a_row(count: int) -> int:
    """The first of `count` consecutive free ports (for replicas on --port, --port + 1, ...)."""
    while True:
        first = free_port()
        try:
            with contextlib.ExitStack() as held:
                for port in range(first, first + count):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", port))
        except OSError:
            continue
        return first


class FrontDoor:
    """What the tests reach a running stack through (the native one or the containers): its HTTPS base
    URL, the CA its certificate comes from, and an API key it accepts."""

    base_url: str
    ca_file: Path
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def tls(self) -> ssl.SSLContext:
        """Trusts the stack's CA, and nothing else."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def client(self, **kwargs: Any) -> httpx.Client:
        """A client of the front door that trusts the stack's CA and sends the API key."""
        defaults = {"timeout": 120, "headers": self.headers}
        return httpx.Client(base_url=self.base_url, verify=self.tls(), **(defaults | kwargs))

    def worker_queue_length(self, worker_url: str) -> int:
        """FastChat's queue length of one replica, asked of the worker itself."""
        response = httpx.post(f"{worker_url}/api/worker_get_status", headers=self.headers, timeout=5)
        length: int = response.json()["queue_length"]
        return length
