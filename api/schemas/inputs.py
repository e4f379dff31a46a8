"""Bounded input types: every client-supplied id, name, number and time the API takes.

Each value is checked where it enters (body, path or query), so what reaches the
database always fits its column: no NUL or control characters (PostgreSQL refuses
a NUL in text, and a log line or the audit trail should not carry them), strings
no longer than their column, integers within the columns' 32-bit ``INTEGER`` and
offsets a database can skip, datetimes written as ISO 8601 text with a timezone (what the
OpenAPI document's ``format: date-time`` says) that still exist once converted to UTC.
A value outside these bounds is a 422 naming the field and what is wrong.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Path, Query
from pydantic import AfterValidator, AwareDatetime, BeforeValidator, Field, Strict, StringConstraints

MAX_OFFSET = 1_000_000  # deeper pages are a scan of the whole table; filter by time instead
MAX_DB_INT = 2**31 - 1  # ids and user ids are INTEGER columns
ID_MAX_CHARS = 64  # systems.id, system_id columns, usernames
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


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


def iso_8601(value: object) -> object:
    """A time is text (or a ``datetime``), never a number: pydantic would read ``0.5`` or ``"1700000000"``
    as seconds (or milliseconds, when large) since 1970, which the schema does not allow and a client
    sending a number rarely means."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or _NUMBER.fullmatch(value):
        raise ValueError("expected an ISO 8601 date-time with a timezone, e.g. 2026-03-01T12:00:00Z")
    return value


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
UtcDatetime = Annotated[AwareDatetime, BeforeValidator(iso_8601), AfterValidator(as_utc)]
DbInt = Annotated[int, Field(ge=-MAX_DB_INT - 1, le=MAX_DB_INT)]
# In a JSON body a value has the JSON type the schema gives it: pydantic's lax mode would also read 0 or
# "yes" as a boolean and "5" or 5.0 as an integer. (Path and query values are text, parsed as usual.)
JsonBool = Annotated[bool, Strict()]
JsonInt = Annotated[int, Strict()]
DbId = Annotated[JsonInt, Field(ge=1, le=MAX_DB_INT)]  # an id in a body
# A measured value: a JSON number. Not ``true`` (pydantic would read 1.0), not ``"45.1"``. The NaN or
# Infinity that Python's JSON parser accepts (no JSON number is) are refused with the rest of a cycle's
# checks (``hydraulics.validation``), naming the channel and sample: per item in a batch, not the request.
Sample = Annotated[float, Strict()]

# Path and query parameters.
SystemIdPath = Annotated[str, Path(max_length=ID_MAX_CHARS, examples=["rig-01"]), AfterValidator(no_control_characters)]
IdPath = Annotated[int, Path(ge=1, le=MAX_DB_INT)]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description=f"rows to skip, at most {MAX_OFFSET}")]
