"""JSON text in and out on the hot paths, with the standard library's semantics.

The backfill parses every old document and serialises every batch it writes, so JSON
is a large share of its time. orjson does the common case several times faster; where
it would answer differently from the standard library (NaN, integers beyond 64 bits,
lone surrogates, non-string keys, datetimes, str subclasses) it refuses, and the
standard library gives the answer. So the result never depends on which one ran.

One case orjson does not refuse: it parses an integer outside [-2**63, 2**64) as a
float. Text with a run of 19 or more digits therefore goes to the standard library
(found with ``bytes.translate`` and a substring search: a regular expression would
cost more than the parse).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson

_STRICT = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS
_SORTED = _STRICT | orjson.OPT_SORT_KEYS
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_compact_sorted = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode


_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_NUMBER = b"0" * 19


def loads(text: bytes) -> Any:
    """Parse one JSON document exactly as ``json.loads`` would, or raise ValueError.

    Text nested deeper than the standard library can parse (it recurses, and gives up
    near Python's recursion limit, about 1,000 levels) is a ValueError too, not a
    RecursionError: for a caller, such text is simply not a document it can read.
    """
    try:
        if _LONG_NUMBER in text.translate(_DIGITS_AS_ZERO):
            return json.loads(text)
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply to parse") from None


def dumps(value: Any, *, sort_keys: bool = False) -> str:
    """Compact JSON text, non-ASCII kept, as ``json.dumps`` would write it.

    Values must already be checked (the mapping rejects NaN and infinity): orjson
    would write those as ``null`` where the standard library writes ``NaN``. Floats may
    be spelled differently (``1e-5`` for ``1e-05``); they parse to the same number.
    """
    try:
        return orjson.dumps(value, option=_SORTED if sort_keys else _STRICT).decode()
    except TypeError:  # orjson.JSONEncodeError: leave the answer to the standard library
        return (_compact_sorted if sort_keys else _compact)(value)


def _iso_utc(value: Any) -> str:
    if not isinstance(value, datetime):
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


_WITH_TIMES = orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_NAIVE_UTC
_compact_with_times = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, default=_iso_utc
).encode


def dumps_with_times(value: Any) -> str:
    """:func:`dumps`, but datetimes become ISO 8601 text with their UTC offset.

    A naive datetime is UTC (the mapping's rule) and is written with ``+00:00``. The
    fraction of a second is written when it is not zero, with six digits. For a SQL
    batch whose server reads the offset (``timestamptz``): orjson writes a datetime in
    C for a fraction of what ``datetime.isoformat`` costs in Python.
    """
    try:
        return orjson.dumps(value, option=_WITH_TIMES).decode()
    except TypeError:
        return _compact_with_times(value)


_allow_no_nan = json.JSONEncoder(allow_nan=False).encode


def check(value: Any) -> None:
    """Raise TypeError or ValueError where ``json.dumps(value, allow_nan=False)`` would.

    orjson writes NaN and infinity as ``null`` instead of refusing them, so output that
    holds a ``null`` (or that orjson refused) is checked again by the standard library.
    """
    try:
        text = orjson.dumps(value, option=_STRICT)
    except TypeError:
        text = b"null"
    if b"null" in text:
        _allow_no_nan(value)
