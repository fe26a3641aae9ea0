"""`python -m tests.unit.drained_worker PORT`: a worker over the vLLM stand-in (ten words, 0.2 s apart),
with LLM Ops' lifespan (SIGTERM handling), served by uvicorn in the main thread as vLLM serves its app;
it drains for 1 s after SIGTERM."""

from __future__ import annotations

import asyncio
import sys

import uvicorn

from tests.unit.fake_vllm import FakeVllm, fake_worker


async def main(port: int) -> None:
    vllm = FakeVllm(words=[f" word{n}" for n in range(10)], delay=0.2)
    app = await fake_worker(vllm, flags=["--drain-seconds", "1"])
    await uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="info")).serve()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
