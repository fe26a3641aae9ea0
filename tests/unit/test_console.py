"""What `llm-ops up` prints: the processes' lines, less Traefik's start-up warnings, with the engine's
start as progress."""

from __future__ import annotations

import datetime
import io

from honcho.printer import Message

from llm_ops.console import StackPrinter
from llm_ops.stack import START_PHASES


def line(name: str, text: str) -> Message:
    return Message(type="line", data=text.encode(), time=datetime.datetime(2026, 12, 1, 12), name=name, colour=None)


def printed(output: io.StringIO) -> list[str]:
    return output.getvalue().splitlines()


def test_traefiks_health_check_warnings_are_left_out_until_the_stack_serves_then_shown() -> None:
    output = io.StringIO()
    printer = StackPrinter(output, width=7, phases=START_PHASES)
    warning = 'WRN Health check failed. error="dial tcp 127.0.0.1:21002: connect: connection refused"'
    printer.write(line("traefik", warning))
    printer.write(line("traefik", "INF Starting provider *file.Provider"))
    assert printed(output) == ["12:00:00 traefik | INF Starting provider *file.Provider"]
    printer.serving.set()
    printer.write(line("traefik", warning))
    assert printed(output)[-1] == f"12:00:00 traefik | {warning}"


def test_each_phase_of_the_engines_start_is_said_once_with_the_time_it_took_so_far() -> None:
    output = io.StringIO()
    printer = StackPrinter(output, width=7, phases=START_PHASES)
    for text in (
        "Preparing the default model SmolLM2-135M-Instruct from /x.gguf (once, about 20 s)...",
        "Default model ready in /models/SmolLM2-135M-Instruct (19 s)",
        "(Worker pid=1) INFO [cpu_model_runner.py:68] Starting to load model /models/SmolLM2...",
        "(Worker pid=1) INFO [cpu_model_runner.py:68] Starting to load model /models/SmolLM2...",
        "(Worker pid=1) INFO [cpu_model_runner.py:87] Warming up model for the compilation...",
        "(EngineCore pid=2) INFO [core.py:402] init engine (profile, create kv cache, warmup model) took 35.20 s",
    ):
        printer.write(line("worker", text))
    ours = [text.split(" | ")[1] for text in printed(output) if " llm-ops | " in text]
    assert [text.split(" (")[0] for text in ours] == [
        "preparing the default model",
        "starting the engine",
        "loading the model",
        "compiling the model; the first start takes a minute more",
        "the engine is ready; its API server starts",
    ]
    assert all(text.endswith(" s)") for text in ours)


def test_still_starting_says_the_phase_and_the_time_unless_a_progress_line_just_did() -> None:
    output = io.StringIO()
    printer = StackPrinter(output, width=7, phases=START_PHASES)
    printer.write(line("worker", "(Worker pid=1) INFO Starting to load model /models/SmolLM2..."))
    printer.still_starting()
    assert not [text for text in printed(output) if "still starting" in text]
    printer.last_said -= 60
    printer.still_starting()
    assert (
        printed(output)[-1].startswith("12:") is False and "still starting: loading the model (" in printed(output)[-1]
    )
