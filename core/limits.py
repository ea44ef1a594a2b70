"""The limits a value must meet to be carried by both stores and the read API.

Every path that brings data in (an event, a backfilled document, a repair, a replay)
checks these once, at decode time, through :mod:`stores.mapping`. A value outside them
is refused there with a reason (a poison message, a bad document), so no sink can take
what another refuses and the stores cannot diverge because of it.

Why each limit:

- **Nesting depth** (:data:`MAX_DEPTH` container levels inside one column value): the
  RethinkDB driver refuses a query nested deeper than 20 levels (``r.expr``'s
  ``nesting_depth``); a batch write spends two levels on the list and the document,
  which leaves 18, and 16 keeps a margin. It also bounds every recursive walk over a
  value (canonical comparison, serialisation), which is what keeps a hostile event from
  ever reaching Python's recursion limit.
- **Text**: every string (keys, client ids, field names, values) must be encodable as
  UTF-8 (no lone surrogates: ``"\\ud800"`` is valid JSON but no driver can send it) and
  hold no NUL character (PostgreSQL text and JSON cannot store it and ODBC drivers cut
  strings at it, so ``"a\\u0000b"`` would be stored as ``"a"`` or refused).
- **Numbers**: finite (JSON has no NaN or infinity) and integers within +/- 2**53,
  inside JSON values, in integer columns and as versions (checked by the mapping):
  RethinkDB stores every number as a double, so a larger integer would come back as
  another number from the old store (and two larger versions could compare equal).
- **Sizes**: at most :data:`MAX_ARRAY_ITEMS` items in one array (RethinkDB's default
  ``array_limit``) and :data:`MAX_BODY_BYTES` in one message body (Pub/Sub's own limit).

Duplicate keys in a JSON object are not an error: the last one wins, as in every JSON
parser cutover uses, so both sinks see the same value.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

#: Container levels (arrays, objects) allowed inside one column value.
MAX_DEPTH = 16
#: Container levels allowed in a whole event: the event object and ``data``, then values.
MAX_EVENT_DEPTH = MAX_DEPTH + 2
#: Items in one JSON array.
MAX_ARRAY_ITEMS = 100_000
#: Largest integer magnitude inside a JSON value (exact in a double).
MAX_SAFE_INTEGER = 2**53
#: Timestamps the old store keeps to the microsecond: RethinkDB holds a time as a
#: double of epoch seconds, whose spacing stays under 1 us (so the driver's rounding
#: gives the same microsecond back) only within +/- 2**33 s of 1970 (1697..2242).
EARLIEST_TIME = datetime(1700, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(2240, 1, 1, tzinfo=UTC)
#: Characters in one client id (the SQL store's client column).
MAX_CLIENT_ID_CHARS = 255
#: Bytes in one message body or exported document.
MAX_BODY_BYTES = 10 * 1024 * 1024


class LimitError(ValueError):
    """A value outside the contract's limits; the message says which limit."""


def check_text(value: str) -> None:
    """Raise :class:`LimitError` unless ``value`` is NUL-free and encodable as UTF-8."""
    if "\x00" in value:
        raise LimitError("holds a NUL character (U+0000), which the stores cannot keep")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = value[exc.start : exc.end]
            raise LimitError(
                f"holds a lone surrogate ({bad.encode('unicode_escape').decode()}), "
                "which is not text in UTF-8"
            ) from None


def check_json(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """Raise :class:`LimitError` unless ``value`` is JSON within every limit.

    JSON here is what ``json.loads`` returns: dicts with string keys, lists, strings,
    ints, finite floats, booleans and None (tuples count as lists). Anything else (a
    datetime, bytes, a set) is refused as "not JSON". The walk is iterative and stops
    at the first container past ``max_depth``, so its cost is bounded by the value's
    size whatever the nesting, and it never recurses.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        item, depth = pop()
        kind = type(item)
        if kind is str:
            check_text(item)
        elif kind is int:
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                raise LimitError(
                    f"holds an integer {_short(item)} beyond +/- 2**53 (not exact in a double)"
                )
        elif kind is float:
            if not math.isfinite(item):
                raise LimitError("is not JSON-serialisable: it holds NaN or infinity")
        elif item is None or kind is bool:
            continue
        elif kind is dict or kind is list or kind is tuple:
            depth += 1
            if depth > max_depth:
                raise LimitError(f"is nested more than {max_depth} levels deep")
            if kind is dict:
                for key, child in item.items():
                    if type(key) is not str:
                        raise LimitError(f"has a non-string object key {key!r:.40}")
                    check_text(key)
                    push((child, depth))
            else:
                if len(item) > MAX_ARRAY_ITEMS:
                    raise LimitError(
                        f"has an array of {len(item)} items (at most {MAX_ARRAY_ITEMS})"
                    )
                for child in item:
                    push((child, depth))
        else:
            raise LimitError(f"is not JSON-serialisable: a {kind.__name__} is not a JSON value")


def check_depth(value: Any, max_depth: int) -> None:
    """Raise :class:`LimitError` when containers nest more than ``max_depth`` levels.

    Iterative, like :func:`check_json`; only the shape is checked here.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            if depth > max_depth:
                raise LimitError(f"is nested more than {max_depth} levels deep")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth) for child in children)


def check_time(value: datetime) -> None:
    """Raise :class:`LimitError` for an aware timestamp outside the kept range."""
    if not EARLIEST_TIME <= value < LATEST_TIME:
        raise LimitError(
            f"timestamp {value.isoformat()} is outside {EARLIEST_TIME:%Y}..{LATEST_TIME:%Y} "
            "(RethinkDB keeps times as doubles: beyond it they lose microseconds)"
        )


def depth_at_most(text: bytes | str, max_depth: int) -> bool:
    """A cheap sufficient test: True when ``text`` cannot nest deeper than ``max_depth``.

    Counts every ``[`` and ``{`` (strings included), which bounds the depth from above;
    False means "maybe deeper: walk the parsed value". Small events and documents
    answer True for the cost of two C-level counts.
    """
    if isinstance(text, str):
        return text.count("[") + text.count("{") <= max_depth
    return text.count(b"[") + text.count(b"{") <= max_depth


def describe() -> dict[str, Any]:
    """The limits for ``cutover events schema`` and the docs."""
    return {
        "max_depth_per_value": MAX_DEPTH,
        "max_event_depth": MAX_EVENT_DEPTH,
        "max_array_items": MAX_ARRAY_ITEMS,
        "max_safe_integer_in_json": MAX_SAFE_INTEGER,
        "max_body_bytes": MAX_BODY_BYTES,
        "timestamps": f"from {EARLIEST_TIME.isoformat()} to before {LATEST_TIME.isoformat()}",
        "text": "UTF-8 encodable (no lone surrogates), no NUL (U+0000)",
        "numbers": "finite (no NaN or infinity)",
        "integers": "within +/- max_safe_integer_in_json in integer columns and versions too",
        "keys": "at most the entity's key_max_length characters (default 255)",
        "duplicate_object_keys": "the last one wins",
    }


def _short(number: int) -> str:
    # str() of a huge int is slow and refused past 4,300 digits: size it by bits instead.
    if number.bit_length() > 80:
        return f"of {number.bit_length()} bits"
    return str(number)
