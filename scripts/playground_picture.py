"""Takes the README's picture of the playground (docs/playground.png) from a stack that runs and does nothing
else, so that its numbers are what a newcomer sees:

    make up                                                          # shell 1, and wait for the banner
    PYTHONPATH=. .venv/bin/python scripts/playground_picture.py      # shell 2

It asks the README's question once to warm the engine, then again for the picture (greedy, 32 tokens), in
Debian's Chromium trusting the stack's CA (.llm-ops/tls/ca.pem). LLM_OPS_API_KEY: a key, if the stack has keys.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from playwright.sync_api import expect

from tests.browser import ask, enter_key, playground, trusting_home

ROOT = Path(__file__).parents[1]
QUESTION = "What is the capital of France?"
ANSWER_TIMEOUT_MS = 120_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="https://localhost:8443")
    parser.add_argument("--ca-file", type=Path, default=ROOT / ".llm-ops" / "tls" / "ca.pem")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "playground.png")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="playground-picture-") as home,
        playground(args.base_url, trusting_home(Path(home), args.ca_file)) as page,
    ):
        if os.environ.get("LLM_OPS_API_KEY"):
            enter_key(page, os.environ["LLM_OPS_API_KEY"])
        for _ in range(2):  # the first answer warms the engine up; the picture shows the second
            ask(page, QUESTION, max_tokens=32)
            stats = page.locator(".message.assistant").last.locator(".stats")
            expect(stats).to_contain_text("finish: ", timeout=ANSWER_TIMEOUT_MS)
        page.screenshot(path=str(args.output))
        print(f"{args.output}: {stats.inner_text()}")


if __name__ == "__main__":
    main()
