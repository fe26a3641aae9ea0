"""The bytes a worker stream takes for one long answer, FastChat's cumulative text versus deltas.

Start the stack first (`make up`), then:

    .venv/bin/python benchmarks/stream_bytes.py --max-new-tokens 1000

Sends the same greedy completion twice to the worker's `worker_generate_stream`, once without
`stream_text` (each chunk carries the text so far) and once with `"stream_text": "delta"`, checks
that the deltas join to the same text, and prints the bytes of each stream.
"""

from __future__ import annotations

import argparse
import json

import httpx

from llm_ops.access import api_keys_from_environment, authorization_headers
from llm_ops.protocol.framing import DELIMITER


def stream(client: httpx.Client, url: str, body: dict[str, object]) -> tuple[list[dict[str, object]], int]:
    """The stream's chunks and its size in bytes."""
    raw = client.post(url, json=body).raise_for_status().content
    return [json.loads(part) for part in raw.split(DELIMITER) if part.strip()], len(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", default="http://127.0.0.1:21002/api")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--prompt", default="Once upon a time, in a small village by the sea,")
    parser.add_argument("--max-new-tokens", type=int, default=1000)
    args = parser.parse_args()

    body = {
        "model_identifier": args.model,
        "generation_mode": "completion",
        "prompt": args.prompt,
        "temperature": 0,
        "max_new_tokens": args.max_new_tokens,
    }
    headers = authorization_headers(api_keys_from_environment())
    url = f"{args.worker}/worker_generate_stream"
    with httpx.Client(timeout=600, headers=headers) as client:
        cumulative, cumulative_bytes = stream(client, url, body)
        deltas, delta_bytes = stream(client, url, body | {"stream_text": "delta"})
    text = str(cumulative[-1]["text"])
    assert "".join(str(chunk["text"]) for chunk in deltas) == text, "the deltas do not join to the same text"
    tokens = cumulative[-1]["usage"]["completion_tokens"]  # type: ignore[index]
    print(f"{tokens} tokens, {len(text)} characters, {len(cumulative)} and {len(deltas)} chunks")
    print(f"cumulative: {cumulative_bytes:>10,} bytes")
    print(f"delta:      {delta_bytes:>10,} bytes  ({cumulative_bytes / delta_bytes:.1f}x fewer)")


if __name__ == "__main__":
    main()
