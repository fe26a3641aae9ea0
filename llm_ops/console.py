"""What `llm-ops up` prints: every process's lines, prefixed by honcho, less the start-up noise.

While the stack starts, Traefik's health checks find the worker not listening yet and warn about it
every two seconds; those warnings are dropped until the stack serves (after that, a failed health
check is news). The engine's start is shown as progress instead: a line when it enters each phase
and, until the stack serves, how long it has been waiting.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Sequence

from honcho.printer import Message, Printer

NAME = "llm-ops"
STARTUP_NOISE = ("Health check failed",)
QUIET_SECONDS = 10.0  # "still starting" only after this long without a progress line


class StackPrinter(Printer):  # type: ignore[misc]
    """`phases`: (text in a worker's line that starts a phase of its start, what to say), in order."""

    def __init__(self, *args: object, phases: Sequence[tuple[str, str]], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.phases = phases
        self.started_at = time.monotonic()
        self.serving = threading.Event()
        self.phase = "starting the worker"
        self.last_said = self.started_at
        self._lock = threading.Lock()

    def write(self, message: Message) -> None:
        text = message.data.decode("utf-8", "replace") if isinstance(message.data, bytes) else message.data
        if not self.serving.is_set():
            if message.name == "traefik" and any(noise in text for noise in STARTUP_NOISE):
                return
            if (message.name or "").startswith("worker"):
                self._follow_phases(text)
        with self._lock:
            super().write(message)

    def _follow_phases(self, text: str) -> None:
        for marker, phase in self.phases:
            if marker in text and phase != self.phase:
                self.phase = phase
                self.say(f"{phase} ({self.elapsed():.0f} s)")

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def say(self, line: str) -> None:
        """A line of our own, prefixed like the processes' lines."""
        message = Message(type="line", data=line, time=datetime.datetime.now(), name=NAME, colour=None)
        with self._lock:
            self.last_said = time.monotonic()
            super().write(message)

    def still_starting(self) -> None:
        """Says how long the start has taken, unless a line of ours just did."""
        if time.monotonic() - self.last_said >= QUIET_SECONDS:
            self.say(f"still starting: {self.phase} ({self.elapsed():.0f} s)")
