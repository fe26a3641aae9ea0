"""pydantic's validation errors as sentences a person can act on, for every server's error bodies."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

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


def describe_validation_errors(errors: Iterable[Any], not_fields: frozenset[str] = frozenset()) -> InvalidRequest:
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
