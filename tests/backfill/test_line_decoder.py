"""The backfill's fast path (msgspec) against the reference path, on generated lines.

The reference is what the export reader did before the fast path existed, and still
does for every line the fast path declines: ``jsontext.loads``, ``native`` for TIME
objects, ``row_from_document``. The fast path may decline anything, but whatever it
accepts must be the very row the reference maps; so a document the reference
rejects (with its error message and the key it names) is always rejected.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hostile import (
    any_of,
    as_bytes,
    export_lines,
    json_texts,
    numbers,
    scalars,
    texts,
    time_objects,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backfill.line_decoder import block_decoder, line_decoder
from backfill.sources import native
from core.config import Column, ColumnType, Config, Entity, load_config
from stores import jsontext
from stores.mapping import MappingError, Row, row_from_document


def _entity() -> Entity:
    """Every column type, bounded and unbounded strings, a non-nullable column and a
    column read from a differently named field."""
    return Entity(
        name="things",
        topic="things",
        rethinkdb_db="app",
        rethinkdb_table="things",
        sql_table="things",
        columns=(
            Column(name="label", type=ColumnType.STRING, max_length=5),
            Column(name="body", type=ColumnType.STRING),
            Column(name="count", type=ColumnType.INT, nullable=False),
            Column(name="price", type=ColumnType.FLOAT, source="amount"),
            Column(name="flag", type=ColumnType.BOOL),
            Column(name="at", type=ColumnType.DATETIME),
            Column(name="doc", type=ColumnType.JSON),
        ),
    )


THINGS = _entity()
DECODE = line_decoder(THINGS)
DECODE_BLOCK = block_decoder(THINGS)


def reference(entity: Entity, text: bytes) -> Row | str:
    """The reference path's answer: a Row, or why not."""
    try:
        doc = native(jsontext.loads(text))
    except ValueError:
        return "not JSON"
    if not isinstance(doc, dict):
        return "not an object"
    try:
        return row_from_document(entity, doc)
    except MappingError as exc:
        return f"bad: {exc}"
    except Exception as exc:  # the reference's own limits: the fast path must decline too
        return f"error: {type(exc).__name__}"


_TIMES = st.sampled_from(
    [
        "2024-04-01T21:52:03.622000Z",
        "2024-04-01T21:52:03Z",
        "2024-04-01T21:52:03+02:00",
        "2024-04-01T21:52:03.622000z",
        "2024-04-01t21:52:03Z",
        "2024-04-01 21:52:03",
        "2024-04-01",
        "2024-04-01T21:52:03.1234567Z",
        "not a time",
        "",
    ]
)
_TIME_OBJECTS = st.fixed_dictionaries(
    {"$reql_type$": st.sampled_from(["TIME", "GEOMETRY"])},
    optional={
        "epoch_time": st.one_of(
            st.floats(-1e10, 1e10), st.integers(-(10**10), 10**10), st.just("12"), st.booleans()
        ),
        "timezone": st.just("+00:00"),
    },
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63), 2**63, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([3.0, -0.0, 1e16, 1e300, 2.5]),
    st.text(max_size=8),
    st.sampled_from(["", "abcde", "abcdef", "\U0001f600" * 5, "\U0001f600" * 6, "é"]),
    _TIMES,
)
_VALUES = st.one_of(
    _SCALARS,
    _TIME_OBJECTS,
    st.lists(_SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=3), _SCALARS, max_size=3),
    st.just({"nested": {"$reql_type$": "TIME", "epoch_time": 5}}),
)
_FIELDS = ["id", "client_id", "version", "_deleted", "label", "body", "count", "amount"]
_FIELDS += ["flag", "at", "doc", "price", "extra"]


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly well-formed documents, each field possibly missing or of any type."""
    good = {
        "id": draw(st.sampled_from(["k1", "k-é", "\U0001f600"])),
        "client_id": "c1",
        "version": draw(st.integers(0, 9)),
        "label": draw(st.text(max_size=5)),
        "body": draw(st.text()),
        "count": draw(st.integers(-(2**63), 2**63 - 1)),
        "amount": draw(st.floats(allow_nan=False, allow_infinity=False)),
        "flag": draw(st.booleans()),
        "at": draw(st.one_of(_TIMES, _TIME_OBJECTS)),
        "doc": draw(_VALUES),
    }
    if draw(st.booleans()):
        good["_deleted"] = draw(st.sampled_from([True, False, 1, 0, "yes", "", None]))
    for name in draw(st.lists(st.sampled_from(_FIELDS), max_size=3, unique=True)):
        if draw(st.booleans()):
            good.pop(name, None)
        else:
            good[name] = draw(_VALUES)
    return good


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents(), ascii_only=st.booleans())
@example(
    doc={"id": "k", "client_id": "c", "version": 1, "count": 1, "at": "2024-04-01"}, ascii_only=True
)
def test_the_fast_path_maps_exactly_as_the_reference_or_declines(
    doc: dict[str, Any], ascii_only: bool
) -> None:
    text = json.dumps(doc, ensure_ascii=ascii_only).encode()
    fast = DECODE(text) if DECODE is not None else None
    if fast is not None:
        assert fast == reference(THINGS, text), text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(documents(), min_size=1, max_size=6), ascii_only=st.booleans())
def test_a_block_maps_exactly_as_its_lines_or_not_at_all(
    docs: list[dict[str, Any]], ascii_only: bool
) -> None:
    """The block decoder is the line decoder over many documents at once: the same
    values when every line is certain, and nothing as soon as one is not."""
    assert DECODE is not None and DECODE_BLOCK is not None
    lines = [json.dumps(doc, ensure_ascii=ascii_only).encode() for doc in docs]
    rows = [DECODE(line) for line in lines]
    block = DECODE_BLOCK([line + b",\n" for line in lines])
    if any(row is None for row in rows):
        assert block is None
    else:
        assert block == [
            [r.key, r.client_id, r.version, r.deleted, *r.values.values()]
            for r in rows
            if r is not None
        ]


@pytest.mark.parametrize(
    "text",
    [
        b'{"id": "k", "client_id": "c", "version": 3.0, "count": 1}',  # integral float
        b'{"id": "k", "client_id": "c", "version": 1, "count": 2.0}',
        b'{"id": "k", "client_id": "c", "version": 1, "count": 1, "amount": NaN}',
        b'{"id": "k", "client_id": "c", "version": 1, "count": 1, "amount": 1e400}',
        b'{"id": "k", "client_id": "c", "version": 1, "count": 1, "body": "\\ud800"}',
        b'{"id": "k", "client_id": "c", "version": 1, "count": 1, "doc": {"$reql_type$": "TIME",'
        b' "epoch_time": 0}}',
        b'{"id": "k", "client_id": "c", "version": 1, "count": 1, "doc": 123456789012345678901}',
        b'{"id": "k", "client_id": "c", "version": 1, "count": 1, "id": 5}',  # duplicate key
        b'{"\\u0069d": "k", "client_id": "c", "version": 1, "count": 1}',  # escaped name
        b'{"id": "k", "client_id": "c", "version": 1}',  # non-nullable column missing
        b"[1, 2]",
    ],
)
def test_the_fast_path_on_the_corner_cases(text: bytes) -> None:
    assert DECODE is not None
    fast = DECODE(text)
    assert fast is None or fast == reference(THINGS, text)


def test_the_fast_path_takes_the_documents_an_export_holds(config: Config) -> None:
    """Not a path that always declines: plain documents, TIME objects, tombstones."""
    orders = config.entity("orders")
    decode = line_decoder(orders)
    assert decode is not None
    t = datetime(2024, 4, 1, 21, 52, 3, 622000, tzinfo=UTC)
    lines = [
        {
            "id": "a",
            "client_id": "c",
            "version": 1,
            "status": "new",
            "amount": 3,
            "quantity": 2,
            "paid": False,
            "placed_at": "2024-04-01T21:52:03.622Z",
            "meta": {"tags": ["x"], "n": 1},
        },
        {
            "id": "b",
            "client_id": "c",
            "version": 2,
            "placed_at": {"$reql_type$": "TIME", "epoch_time": t.timestamp(), "timezone": "+00:00"},
        },
        {"id": "c", "client_id": "c", "version": 3, "_deleted": True},
    ]
    for doc in lines:
        text = json.dumps(doc).encode()
        row = decode(text)
        assert row is not None, doc
        assert row == reference(orders, text)
    first = decode(json.dumps(lines[0]).encode())
    assert first is not None and first.values["amount"] == 3.0
    assert type(first.values["amount"]) is float
    second = decode(json.dumps(lines[1]).encode())
    assert second is not None and second.values["placed_at"] == t


def test_entities_msgspec_cannot_declare_have_no_fast_path() -> None:
    """Two columns reading one field: the reference path handles those alone."""
    twice = THINGS.model_copy(
        update={
            "columns": (*THINGS.columns, Column(name="again", type=ColumnType.INT, source="count"))
        }
    )
    assert line_decoder(twice) is None


# -- the hostile space (tests/hostile.py): the fast path never takes what the limits refuse --
ORDERS = load_config(Path(__file__).resolve().parents[2] / "cutover.toml").entity("orders")
DECODE_ORDERS = line_decoder(ORDERS)
DECODE_ORDERS_BLOCK = block_decoder(ORDERS)


@st.composite
def _hostile_things(draw: st.DrawFn) -> bytes:
    """A document of every column type with hostile values in any field."""
    fields = {
        "id": draw(any_of(st.just('"k"'), texts.map(json.dumps))),
        "client_id": '"c"',
        "version": draw(any_of(st.integers(0, 9), numbers).map(json.dumps)),
        "label": draw(any_of(st.just('"abc"'), texts.map(json.dumps))),
        "body": draw(any_of(st.just('"b"'), texts.map(json.dumps))),
        "count": draw(any_of(st.just("1"), numbers.map(json.dumps))),
        "amount": draw(any_of(st.just("2.5"), numbers.map(json.dumps))),
        "at": draw(any_of(st.just('"2024-04-01T21:52:03Z"'), time_objects)),
        "doc": draw(json_texts()),
    }
    for name in draw(st.lists(st.sampled_from(sorted(fields)), max_size=2, unique=True)):
        fields[name] = draw(any_of(json_texts(), time_objects, scalars.map(json.dumps)))
    return as_bytes("{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_hostile_things())
def test_hostile_documents_map_as_the_reference_or_are_declined(text: bytes) -> None:
    """Deep nesting (to 10,000 levels), lone surrogates, NUL, integers past 2**53,
    arrays, TIME objects anywhere: whatever the fast path maps, the reference maps to
    the same row; whatever the reference refuses (the contract's limits included), the
    fast path declines. Neither raises."""
    assert DECODE is not None
    fast = DECODE(text)
    if fast is not None:
        assert fast == reference(THINGS, text), text[:300]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(export_lines(), min_size=1, max_size=6))
def test_hostile_export_lines_map_as_the_reference_or_are_declined(lines: list[bytes]) -> None:
    """The same over exported orders documents (tests/hostile.py, the space the subscription
    worker's tests use too), line by line and as a block: a block is taken only when
    every one of its lines is, with the very values the lines give."""
    assert DECODE_ORDERS is not None and DECODE_ORDERS_BLOCK is not None
    rows = [DECODE_ORDERS(line) for line in lines]
    for line, row in zip(lines, rows, strict=True):
        if row is not None:
            assert row == reference(ORDERS, line), line[:300]
    block = DECODE_ORDERS_BLOCK([line + b",\n" for line in lines])
    if any(row is None for row in rows):
        assert block is None
    else:
        assert block == [
            [r.key, r.client_id, r.version, r.deleted, *r.values.values()]
            for r in rows
            if r is not None
        ]


@pytest.mark.parametrize(
    "doc",
    [
        '"doc": ' + "[" * 16 + "]" * 16,  # 16 levels: within the limit
        '"doc": [' + ",".join(["{}"] * 40) + "]",  # many brackets, shallow: walked, taken
        '"doc": [0.12345678901234567, 12345678901234567.5]',  # long digit runs in floats
        '"doc": ' + "[" * 17 + "]" * 17,
        '"doc": ' + "[" * 10_000 + "]" * 10_000,
        '"doc": 9007199254740992',
        '"doc": 9007199254740993',
        '"doc": [-9007199254740993]',
        '"doc": {"a": "x\\u0000y"}',
        '"doc": {"a\\u0000": 1}',
        '"body": "x\\u0000y"',
        '"doc": "\\ud800"',
        '"doc": [' + ",".join(["1"] * 100_001) + "]",
        '"doc": [' + ",".join(["1"] * 100_000) + "]",
        '"count": 9007199254740993',
        '"version": 9007199254740993',
        '"id": "' + "k" * 256 + '"',
        '"client_id": "' + "c" * 256 + '"',  # a later duplicate wins, in both paths
        '"at": {"$reql_type$": "TIME", "epoch_time": 8835955200.0}',  # 2250: out of range
        '"at": "2249-12-31T23:59:59Z"',
        '"extra": ' + "[" * 10_000 + "]" * 10_000,
    ],
)
def test_the_fast_path_at_the_limits(doc: str) -> None:
    """Each limit on both sides of its edge: the fast path maps exactly as the
    reference, or declines; a document the reference refuses is never taken."""
    assert DECODE is not None
    text = ('{"id": "k", "client_id": "c", "version": 1, "count": 1, ' + doc + "}").encode()
    fast = DECODE(text)
    ref = reference(THINGS, text)
    assert fast is None or fast == ref
    if isinstance(ref, Row) and "[" * 17 not in doc and "u0000" not in doc:
        assert fast is not None, "within the limits: the fast path should take it"
