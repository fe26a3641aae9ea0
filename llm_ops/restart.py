"""`python -m llm_ops.restart COMMAND...`: run COMMAND again when it crashes, like Compose's
`restart: unless-stopped`, so that a native replica comes back as its container would.

It gives up (and exits with the command's code) when the command ends cleanly, is stopped by
SIGTERM/SIGINT, or crashes three times within a minute of starting: a worker that cannot start
should stop the stack with its error, not loop forever. SIGTERM to this process's group (what the
stack sends) reaches the command too, so stopping needs nothing here.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

QUICK_CRASH_SECONDS = 60.0
QUICK_CRASHES_ALLOWED = 3
RESTART_DELAY_SECONDS = 1.0
STOPPED = {0, -signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGINT}


def run_restarting(command: list[str]) -> int:
    quick_crashes = 0
    while True:
        started = time.monotonic()
        code = subprocess.call(command)
        if code in STOPPED:
            return code
        quick_crashes = quick_crashes + 1 if time.monotonic() - started < QUICK_CRASH_SECONDS else 0
        if quick_crashes >= QUICK_CRASHES_ALLOWED:
            print(f"{command[0]} crashed {quick_crashes} times right after starting; giving up", flush=True)
            return code
        print(f"{command[0]} exited with {code}; restarting in {RESTART_DELAY_SECONDS:.0f} s", flush=True)
        time.sleep(RESTART_DELAY_SECONDS)


if __name__ == "__main__":
    sys.exit(run_restarting(sys.argv[1:]))
