"""Bounded input types: every client-supplied id, name, number and time the API takes.

Each value is checked where it enters (body, path or query), so what reaches the
database always fits its column: no NUL or control characters (PostgreSQL refuses
a NUL in text, and a log line or the audit trail should not carry them), strings
no longer than their column, integers within the columns' 32-bit ``INTEGER`` and
offsets a database can skip, datetimes that still exist once converted to UTC.
A value outside these bounds is a 422 naming the field and what is wrong.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Path, Query
from pydantic import AfterValidator, AwareDatetime, Field, StringConstraints

MAX_OFFSET = 1_000_000  # deeper pages are a scan of the whole table; filter by time instead
MAX_DB_INT = 2**31 - 1  # ids and user ids are INTEGER columns
ID_MAX_CHARS = 64  # systems.id, system_id columns, usernames
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _refuse(pattern: re.Pattern, what: str):
    def check(value: str) -> str:
        found = pattern.search(value)
        if found:
            raise ValueError(f"{what} must not contain control characters; found {found.group()!r} at {found.start()}")
        return value

    return check


def no_control_characters(value: str) -> str:
    """A single-line value: ids, names, keys."""
    return _refuse(_CONTROL, "value")(value)


def plain_text(value: str) -> str:
    """Free text: line breaks and tabs allowed, NUL and other control characters not."""
    return _refuse(_CONTROL_BUT_LINES, "text")(value)


def as_utc(value: datetime) -> datetime:
    """The value in UTC; a time that has no UTC equivalent (``0001-01-01T00:00:00+14:00``) is refused."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{value.isoformat()} is out of range once converted to UTC") from None


def token(max_length: int, min_length: int = 1) -> type[str]:
    """A single-line string of at most ``max_length`` characters."""
    return Annotated[
        str, StringConstraints(min_length=min_length, max_length=max_length), AfterValidator(no_control_characters)
    ]


def text(max_length: int, min_length: int = 0) -> type[str]:
    """Free text of at most ``max_length`` characters."""
    return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length), AfterValidator(plain_text)]


SystemId = token(ID_MAX_CHARS)  # a reference to a system (lookups); new ids also match SYSTEM_ID_PATTERN
Username = token(ID_MAX_CHARS)
TraceId = token(ID_MAX_CHARS)
UtcDatetime = Annotated[AwareDatetime, AfterValidator(as_utc)]
DbInt = Annotated[int, Field(ge=-MAX_DB_INT - 1, le=MAX_DB_INT)]
DbId = Annotated[int, Field(ge=1, le=MAX_DB_INT)]

# Path and query parameters.
SystemIdPath = Annotated[str, Path(max_length=ID_MAX_CHARS), AfterValidator(no_control_characters)]
IdPath = Annotated[int, Path(ge=1, le=MAX_DB_INT)]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description=f"rows to skip, at most {MAX_OFFSET}")]
