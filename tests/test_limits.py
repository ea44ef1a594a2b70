"""The contract's limits (cutover/limits.py): what they accept, both stores can carry.

No server here: the RethinkDB driver's nesting check runs when a query is built
(``r.expr``), before anything is sent, so building the batch write's expression is the
real check of the limit the legacy sink would hit.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hostile import json_texts, json_values
from hypothesis import given, settings
from hypothesis import strategies as st
from rethinkdb import r
from rethinkdb.errors import ReqlDriverCompileError

from core.limits import (
    MAX_DEPTH,
    MAX_SAFE_INTEGER,
    LimitError,
    check_depth,
    check_json,
    check_text,
    depth_at_most,
)
from stores.mapping import parse_datetime


def _nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def _rethink_accepts(value: Any) -> bool:
    """Whether the legacy sink's batch write (a list of documents) would compile."""
    try:
        r.expr([{"id": "k", "meta": value}])
    except ReqlDriverCompileError:
        return False
    return True


@given(json_values(max_leaves=20))
@settings(max_examples=300, deadline=None)
def test_whatever_the_value_check_json_accepts_or_says_why(value: Any) -> None:
    """Either LimitError with a reason, or a value that UTF-8 JSON and the RethinkDB
    driver both carry, with no NUL and integers exact in a double."""
    try:
        check_json(value)
    except LimitError as exc:
        assert str(exc)
        return
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    text.encode("utf-8")  # no lone surrogate
    assert "\x00" not in text and "\\u0000" not in text
    assert _rethink_accepts(value)


@pytest.mark.parametrize("depth", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 25, 900, 10_000])
def test_depth_limit_is_below_what_the_rethinkdb_driver_refuses(depth: int) -> None:
    value = _nested(depth)
    if depth <= MAX_DEPTH:
        check_json(value)  # accepted, and the legacy sink can write it
        assert _rethink_accepts(value)
    else:
        with pytest.raises(LimitError, match=f"more than {MAX_DEPTH} levels"):
            check_json(value)


def test_the_margin_is_real_the_driver_refuses_a_little_deeper() -> None:
    """The limit is not arbitrary: a few levels past it the legacy sink fails."""
    assert not _rethink_accepts(_nested(MAX_DEPTH + 3))


@given(st.text())
def test_text_without_nul_or_surrogates_is_accepted(value: str) -> None:
    bad = "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if bad:
        with pytest.raises(LimitError):
            check_text(value)
    else:
        check_text(value)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (MAX_SAFE_INTEGER + 1, "beyond"),
        (-(10**5000), "bits"),
        (float("inf"), "NaN or infinity"),
        ({1: "a"}, "non-string object key"),
        ({"a\x00": 1}, "NUL"),
        (b"raw", "not JSON"),
    ],
    ids=["2**53+1", "huge", "inf", "int-key", "nul-key", "bytes"],
)
def test_each_refusal_names_its_limit(value: Any, reason: str) -> None:
    with pytest.raises(LimitError, match=reason):
        check_json(value)


@given(json_texts(max_leaves=20))
@settings(max_examples=300, deadline=None)
def test_depth_fast_path_is_sufficient(text: str) -> None:
    """When the cheap count says "not deeper than d", the real depth is not deeper."""
    try:
        value = json.loads(text)
    except (RecursionError, ValueError):
        return
    for limit in (2, 5, MAX_DEPTH):
        if depth_at_most(text, limit):
            check_depth(value, limit)


@given(st.datetimes(timezones=st.just(UTC)))
@settings(max_examples=300)
def test_every_kept_timestamp_survives_a_double_of_epoch_seconds(value: datetime) -> None:
    """What the mapping accepts comes back to the microsecond from RethinkDB (which keeps
    a time as a double of epoch seconds, as its driver converts it); what it refuses is
    refused with the reason."""
    try:
        kept = parse_datetime(value)
    except ValueError as exc:
        assert "outside 1700..2240" in str(exc)
        return
    assert datetime.fromtimestamp(kept.timestamp(), UTC) == kept
