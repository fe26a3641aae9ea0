"""`python -m llm_ops.restart [--stop-timeout S] COMMAND...`: run COMMAND again whenever it ends, like
Compose's `restart: unless-stopped`, so that a native replica comes back as its container would.

Stopping this process (SIGTERM or SIGINT, which the stack sends) passes the signal on to the command,
waits for it to finish (a worker drains first), and exits with its code, without restarting it; a
command still running `--stop-timeout` seconds later is killed, as `docker stop` does after its
grace period. It also gives up, with the command's code, when the command ends three times within
a minute of starting: a worker that cannot start should stop the stack with its error, not loop.

The command runs in a process group of its own (in the stack's session: see `llm_ops.stack`), as a
container's processes do: the stack signals this wrapper's group, and only the command itself hears
of it, through the wrapper. Otherwise vLLM's engine processes would get the SIGTERM too and die under
the answers the worker is finishing. When the command ends, whatever it left behind in its group
(engine processes of a worker that crashed) is killed. If the wrapper itself is killed outright, the
kernel kills the command (Linux: PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from types import FrameType

QUICK_EXIT_SECONDS = 60.0
QUICK_EXITS_ALLOWED = 3
RESTART_DELAY_SECONDS = 1.0
POLL_SECONDS = 0.1
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the wrapper dies."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _kill_group(leader: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, signal.SIGKILL)


def run_restarting(command: list[str], stop_timeout: float = 60.0) -> int:
    child: subprocess.Popen[bytes] | None = None
    stop_deadline: float | None = None

    def stop(signum: int, _: FrameType | None) -> None:
        nonlocal stop_deadline
        if stop_deadline is None:
            stop_deadline = time.monotonic() + stop_timeout
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    quick_exits = 0
    while True:
        started = time.monotonic()
        child = subprocess.Popen(command, process_group=0, preexec_fn=_die_with_parent)
        while (code := child.poll()) is None:
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                print(f"{command[0]} still running {stop_timeout:g} s after the stop signal; killing it", flush=True)
                _kill_group(child.pid)
            time.sleep(POLL_SECONDS)
        _kill_group(child.pid)  # what the command left behind
        if stop_deadline is not None:
            return code
        quick_exits = quick_exits + 1 if time.monotonic() - started < QUICK_EXIT_SECONDS else 0
        if quick_exits >= QUICK_EXITS_ALLOWED:
            print(f"{command[0]} ended {quick_exits} times right after starting; giving up", flush=True)
            return code
        print(f"{command[0]} exited with {code}; restarting in {RESTART_DELAY_SECONDS:.0f} s", flush=True)
        time.sleep(RESTART_DELAY_SECONDS)
        if stop_deadline is not None:  # stopped during the delay
            return code


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm_ops.restart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stop-timeout", type=float, default=60.0, help="seconds a stopped command gets")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    code = run_restarting(args.command, args.stop_timeout)
    return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as shells and Docker say


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
