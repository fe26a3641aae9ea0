"""FastChat's worker stream framing: each chunk is `json + "\\0"`, text cumulative."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from pydantic import BaseModel

DELIMITER = b"\0"


def encode_chunk(chunk: BaseModel) -> bytes:
    return chunk.model_dump_json().encode() + DELIMITER


async def iter_chunks(stream: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Split a byte stream back into the JSON documents of its chunks."""
    buffer = b""
    async for data in stream:
        buffer += data
        *complete, buffer = buffer.split(DELIMITER)
        for chunk in complete:
            if chunk:
                yield chunk
    if buffer.strip():
        yield buffer
