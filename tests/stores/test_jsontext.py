"""The fast JSON helpers answer exactly as the standard library does.

orjson does the common case; every value where it would differ (NaN, integers beyond
64 bits, lone surrogates, non-string keys, datetimes, str subclasses) must come out
the way ``json`` says. Generated values include all of those.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stores import jsontext

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


def _same(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to NaN and tells 1 from 1.0."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_loads_parses_as_the_standard_library(value: Any) -> None:
    text = json.dumps({"v": value})  # ensure_ascii: surrogates survive as escapes
    assert _same(jsontext.loads(text.encode()), json.loads(text))


@settings(max_examples=300, deadline=None)
@given(_values)
def test_dumps_and_check_agree_with_the_standard_library(value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        with pytest.raises(ValueError):
            jsontext.check(value)
        return
    jsontext.check(value)
    for sort_keys in (False, True):
        ours = jsontext.dumps(value, sort_keys=sort_keys)
        theirs = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys)
        # Floats may be spelled differently (1e-05 / 1e-5); the parsed values match.
        assert _same(json.loads(ours), json.loads(theirs))
        if sort_keys:
            assert ours == theirs or any(isinstance(v, float) for v in _leaves(value))


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    return [value]


def test_big_integers_are_not_turned_into_floats() -> None:
    """orjson reads integers outside [-2**63, 2**64) as floats; we must not."""
    for n in (2**64, -(2**63) - 1, 10**30):
        assert jsontext.loads(str(n).encode()) == n
        assert isinstance(jsontext.loads(f'{{"n": {n}}}'.encode())["n"], int)


def test_what_the_standard_library_refuses_is_refused() -> None:
    with pytest.raises(TypeError, match="datetime"):
        jsontext.dumps({"at": datetime(2024, 1, 1, tzinfo=UTC)})
    with pytest.raises(TypeError, match="datetime"):
        jsontext.check([datetime(2024, 1, 1, tzinfo=UTC)])
    with pytest.raises(ValueError, match="Out of range"):
        jsontext.check({"a": [1.0, float("inf")]})
    with pytest.raises(ValueError):
        jsontext.loads(b'{"a": 1,}')


@settings(max_examples=300, deadline=None)
@given(
    moment=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    zone=st.sampled_from([None, UTC, timezone(timedelta(hours=5, minutes=30)), timezone.min]),
    big=st.booleans(),
)
def test_datetimes_in_a_batch_are_iso_8601_with_their_offset(
    moment: datetime, zone: timezone | None, big: bool
) -> None:
    """Both paths (orjson, and the standard library when orjson refuses the batch: here
    an integer beyond 64 bits) write what ``isoformat`` does, a naive time as UTC."""
    value = moment.replace(tzinfo=zone)
    batch = [[value, 2**70 if big else 1]]
    text = jsontext.dumps_with_times(batch)
    written = json.loads(text)[0][0]
    assert written == (value if zone else value.replace(tzinfo=UTC)).isoformat()
    assert datetime.fromisoformat(written) == value.replace(tzinfo=zone or UTC)
