"""What the HTTP servers of LLM Ops (worker, OpenAI-compatible API) share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request

T = TypeVar("T")

# pydantic error types that mean "a number outside its allowed range".
RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


@dataclass(frozen=True)
class InvalidRequest:
    """pydantic's validation errors, as sentences a person can act on."""

    problems: list[str]
    first_field: str | None
    out_of_range: bool

    def message(self) -> str:
        return "invalid request: " + "; ".join(self.problems)


def describe_validation_errors(errors: Iterable[Any], not_fields: frozenset[str]) -> InvalidRequest:
    """`not_fields`: location parts that are not field names ("body", union tags), left out of messages."""
    problems, fields, out_of_range = [], [], False
    for error in errors:
        out_of_range = out_of_range or error["type"] in RANGE_ERRORS
        if error["type"] == "json_invalid":
            problems.append(f"the request body is not valid JSON: {error.get('ctx', {}).get('error', error['msg'])}")
            continue
        location = ".".join(str(part) for part in error["loc"] if part not in not_fields)
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{location}: {message}" if location else message)
        fields.append(location)
    return InvalidRequest(problems, next((field for field in fields if field), None), out_of_range)


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """Run `work`, cancelling it if the client disconnects first; None then.

    Listens for `http.disconnect` rather than polling `request.is_disconnected()`, as vLLM's
    `with_cancellation` does. Cancelling the work closes the engine or worker stream it reads,
    which aborts the generation.
    """
    work_task = asyncio.ensure_future(work)
    disconnect_task = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({work_task, disconnect_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work_task, disconnect_task):
            task.cancel()
        await asyncio.gather(work_task, disconnect_task, return_exceptions=True)
    if work_task.cancelled():
        return None
    return work_task.result()


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
