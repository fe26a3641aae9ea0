"""`python -m llm_ops.restart COMMAND...`: run COMMAND again whenever it ends, like Compose's
`restart: unless-stopped`, so that a native replica comes back as its container would.

Stopping this process (SIGTERM or SIGINT, which the stack sends) passes the signal on to the command,
waits for it to finish (a worker drains first) and exits with its code, without restarting it. It
also gives up, with the command's code, when the command ends three times within a minute of
starting: a worker that cannot start should stop the stack with its error, not loop forever.

The command runs in a process group of its own, as a container's main process does: the stack
signals this wrapper's group, and only the command itself hears of it, through the wrapper. Otherwise
vLLM's engine processes would get the SIGTERM too and die under the answers the worker is finishing.
If the wrapper is killed outright, the kernel kills the command too (Linux: PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import time
from types import FrameType

QUICK_EXIT_SECONDS = 60.0
QUICK_EXITS_ALLOWED = 3
RESTART_DELAY_SECONDS = 1.0


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the wrapper dies."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_restarting(command: list[str]) -> int:
    child: subprocess.Popen[bytes] | None = None
    stopping = False

    def stop(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    quick_exits = 0
    while True:
        started = time.monotonic()
        child = subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with_parent)
        code = child.wait()
        if stopping:
            return code
        quick_exits = quick_exits + 1 if time.monotonic() - started < QUICK_EXIT_SECONDS else 0
        if quick_exits >= QUICK_EXITS_ALLOWED:
            print(f"{command[0]} ended {quick_exits} times right after starting; giving up", flush=True)
            return code
        print(f"{command[0]} exited with {code}; restarting in {RESTART_DELAY_SECONDS:.0f} s", flush=True)
        time.sleep(RESTART_DELAY_SECONDS)
        if stopping:  # stopped during the delay
            return code


if __name__ == "__main__":
    sys.exit(run_restarting(sys.argv[1:]))
