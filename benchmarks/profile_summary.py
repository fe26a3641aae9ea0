"""Where the worker's event loop spends its busy time, from a py-spy recording of the worker process.

With the stack up and `llm-ops bench` running (docs/benchmarks.md, "Where the time goes"):

    .venv/bin/py-spy record -p <worker pid> -r 200 -f raw -o worker.txt -d 60
    .venv/bin/python benchmarks/profile_summary.py worker.txt

Keeps the samples of the thread that runs the server (`run_worker` is on its stack), drops those where
the loop waits for work, and prints functions by self and by inclusive share of what is left.
"""

from __future__ import annotations

import argparse
from collections import Counter

WAITING = ("select", "Runner.run", "BaseEventLoop.run_forever")


def name(frame: str) -> str:
    function, _, where = frame.partition(" (")
    path = where.split(":")[0]
    return f"{function} {path.split('/site-packages/')[-1].split('/lib/python3.11/')[-1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recording", help="py-spy record -f raw output")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rate", type=int, default=200, help="py-spy's --rate (samples a second)")
    args = parser.parse_args()
    own, inclusive, busy = Counter[str](), Counter[str](), 0
    with open(args.recording) as recording:
        for line in recording:
            stack, _, count = line.rstrip().rpartition(" ")
            frames, samples = stack.split(";"), int(count)
            if not any("run_worker" in frame for frame in frames):
                continue  # vLLM's engine monitor and tokenizer threads
            if frames[-1].startswith(WAITING):
                continue
            busy += samples
            own[name(frames[-1])] += samples
            inclusive.update({name(frame): samples for frame in set(frames)})
    print(f"event loop busy: {busy} samples, {busy / args.rate:.1f} s of CPU")
    for title, counts in (("self", own), ("inclusive", inclusive)):
        print(f"--- {title}")
        for function, samples in counts.most_common(args.top):
            print(f"{samples / busy:6.1%} {function}")


if __name__ == "__main__":
    main()
