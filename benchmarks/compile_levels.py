"""What vLLM's compilation costs and gives on the CPU: a worker's start (with an empty compile cache, and again
with the cache the first start wrote) and its tokens/s, for each optimization level.

    PYTHONPATH=. .venv/bin/python benchmarks/compile_levels.py --levels 0 2 --tokens 128 --answers 16

For each level, `llm-ops worker -O<level>` starts twice on the packaged model with a compile cache of its own
(`VLLM_CACHE_ROOT`, empty before the first start): the seconds until `/health` answers are the cold and the warm
start. After the warm start, `--answers` greedy completions of `--tokens` tokens each (ignore_eos) are streamed
from `/v1/completions` at concurrency 1 and 8; tokens/s is output tokens over wall time. Run it on an idle
machine: it starts one engine at a time, and what else runs shares its cores.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from llm_ops.settings import DEFAULT_MODEL_NAME
from tests.conftest import answers, free_port

START_TIMEOUT = 900.0


def start_worker(level: int, cache_root: Path, log_file: Path) -> tuple[subprocess.Popen[bytes], str, float]:
    """`llm-ops worker -O<level>` on a free port; (process, URL, seconds until /health answered)."""
    port = free_port()
    command = [sys.executable, "-m", "llm_ops", "worker", "--port", str(port), f"-O{level}"]
    env = os.environ | {"VLLM_CACHE_ROOT": str(cache_root), "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    with log_file.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    while not answers(f"{url}/health"):
        if process.poll() is not None or time.monotonic() - started > START_TIMEOUT:
            stop(process)
            raise RuntimeError(f"-O{level}: the worker did not start:\n{log_file.read_text()[-3000:]}")
        time.sleep(0.5)  # polling /health
    return process, url, time.monotonic() - started


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def tokens_per_second(url: str, concurrency: int, answers: int, tokens: int) -> float:
    body = {
        "model": DEFAULT_MODEL_NAME,
        "prompt": "Once upon a time, in a small village by the sea,",
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
    }

    def one(client: httpx.Client) -> int:
        answer = client.post(f"{url}/v1/completions", json=body)
        answer.raise_for_status()
        used: int = answer.json()["usage"]["completion_tokens"]
        return used

    with httpx.Client(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as client:
        one(client)  # warm-up
        started = time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            produced = sum(pool.map(lambda _: one(client), range(answers)))
        return produced / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--answers", type=int, default=16)
    args = parser.parse_args()
    rows = ["level  cold start s  warm start s  tok/s c=1  tok/s c=8"]
    with tempfile.TemporaryDirectory(prefix="compile-levels-") as scratch:
        for level in args.levels:
            cache_root = Path(scratch) / f"vllm-O{level}"
            process, _, cold = start_worker(level, cache_root, Path(scratch) / f"O{level}-cold.log")
            stop(process)
            process, url, warm = start_worker(level, cache_root, Path(scratch) / f"O{level}-warm.log")
            try:
                single = tokens_per_second(url, 1, max(4, args.answers // 4), args.tokens)
                eight = tokens_per_second(url, 8, args.answers, args.tokens)
            finally:
                stop(process)
            rows.append(f"-O{level}  {cold:12.1f}  {warm:12.1f}  {single:9.1f}  {eight:9.1f}")
            print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
