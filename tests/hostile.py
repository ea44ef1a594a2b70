"""Hypothesis strategies for hostile but plausible input: one space for every path.

The subscription worker (event bodies), the backfill (exported lines and live
documents) and replay all draw from here, so "one bad input costs one failure-log
entry or one bad document, never a worker or a batch" is checked over the same space.

The space is what the JSON grammar allows and a producer might send: deep nesting (up
to far past Python's recursion limit), lone surrogates, NUL, long strings, integers of
any size, NaN literals, duplicate object keys, non-UTF-8 bytes and plain garbage, mixed
with perfectly valid values so that every batch has valid neighbours to protect.

Bodies are built as JSON *text* (not through ``json.dumps`` alone) so that what no
encoder would write (a duplicate key, a ``NaN``, a raw surrogate escape, 10,000 nested
arrays) is in the space too.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

#: Strings a producer might send: ordinary text, a lone surrogate, NUL, separators
#: that are line breaks to ``str.splitlines``, '/', '%', quotes.
_TRICKY_CHARS = ["\ud800", "\udfff", "\x00", "\u2028", "\u2029", "\x85", "/", "%", '"', "\\"]


def any_of(*strategies: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """One of ``strategies``, each as likely as the others.

    Not ``st.one_of``: measured here, inside lists and composites hypothesis draws the
    cheapest branch of a ``one_of`` several times as often as the others (garbage five
    times as often as events), so the rare hostile values were hardly ever drawn.
    """
    return st.sampled_from(strategies).flatmap(lambda strategy: strategy)


texts = any_of(
    st.text(max_size=12),
    st.lists(
        any_of(st.sampled_from(_TRICKY_CHARS), st.text(max_size=3)), min_size=1, max_size=5
    ).map("".join),
    st.integers(1, 4).map(lambda n: "x" * (10**n)),  # up to 10,000 characters
)

numbers = any_of(
    st.integers(-(2**31), 2**31),
    st.integers(),  # any size: beyond 2**53 and 2**64 too
    st.sampled_from([2**53, 2**53 + 1, -(2**63), 2**63, 2**62 + 1, 10**30, 10**400]),
    st.floats(allow_nan=False, allow_infinity=False),
)

scalars = any_of(st.none(), st.booleans(), numbers, texts)


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Python values as ``json.loads`` returns them (possibly outside the limits)."""
    return st.recursive(
        scalars,
        lambda inner: any_of(
            st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def _text(value: str) -> str:
    # json.dumps writes a lone surrogate as its \\ud800 escape, which is valid JSON text.
    return json.dumps(value, ensure_ascii=False)


@st.composite
def json_texts(draw: st.DrawFn, max_leaves: int = 12) -> str:
    """JSON text of a value, sometimes with a duplicate key, a NaN, or deep nesting."""
    shape = draw(st.sampled_from(["plain", "plain", "plain", "duplicate", "nan", "deep"]))
    if shape == "deep":
        depth = draw(st.sampled_from([15, 16, 17, 18, 25, 900, 10_000]))
        leaf = json.dumps(draw(scalars), ensure_ascii=False)
        return "[" * depth + leaf + "]" * depth
    if shape == "nan":
        return draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "[1, NaN]"]))
    value = draw(json_values(max_leaves))
    text = json.dumps(value, ensure_ascii=False)
    if shape == "duplicate" and isinstance(value, dict) and value:
        key = next(iter(value))
        dup = json.dumps(draw(scalars), ensure_ascii=False)
        text = "{" + f"{_text(key)}:{dup}," + text[1:]
    return text


#: Timestamps that parse but are out of range once in UTC, or do not parse.
_odd_times = st.sampled_from(
    [
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999Z",
        "2024-13-01T00:00:00Z",
        "2024-05-01T10:00:00",
    ]
)

#: Valid field values for the orders entity (tests/cutover.toml's and the repo's).
_VALID_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "status": st.sampled_from(["new", "paid", "shipped", "ünïcode", "😀"]),
    "amount": st.floats(0, 1e6, allow_nan=False),
    "quantity": st.integers(0, 1000),
    "paid": st.booleans(),
    "placed_at": st.just("2024-05-01T10:00:00Z"),
    "meta": st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 9), max_size=2),
}


def _odd_field(name: str) -> st.SearchStrategy[str]:
    """JSON text of a value of the wrong type or outside the limits, for one field."""
    if name == "meta":
        return json_texts()
    if name == "placed_at":
        return any_of(_odd_times.map(json.dumps), scalars.map(json.dumps))
    if name in ("quantity", "amount"):
        return any_of(scalars.map(json.dumps), _edge_integers.map(json.dumps))
    return scalars.map(lambda v: json.dumps(v))


#: Integers at the edges of what the stores keep exactly (a double: 2**53) or at all.
_edge_integers = st.sampled_from(
    [2**53, 2**53 + 1, -(2**53) - 1, 2**62 + 1, 2**63 - 1, -(2**63), 2**63, 10**30, 10**400]
)


def _orders_field(name: str, *, hostile: bool = True) -> st.SearchStrategy[str]:
    """JSON text of one field: mostly the right type, sometimes the wrong one,
    sometimes hostile (never hostile when ``hostile`` is False)."""
    as_text = _VALID_FIELDS[name].map(lambda v: json.dumps(v))
    if not hostile:
        return as_text
    return any_of(*[as_text] * 6, _odd_field(name))


_keys = st.sampled_from(["o-1", "o-2", "o-3", "o/4", "o %5", "ö-6"])
_clients = st.sampled_from(["acme", "globex", "client/01"])
#: Keys a producer might send that no store should take: longer than the SQL key
#: column (255 by default) or than the contract (900), empty.
_odd_keys = st.sampled_from(["k" * 256, "k" * 300, "k" * 901, ""])
_FIELDS = ("status", "amount", "quantity", "paid", "placed_at", "meta")
#: What of an event may be hostile.
_ASPECTS = (*_FIELDS, "key", "client", "version", "occurred_at")


@st.composite
def event_texts(
    draw: st.DrawFn,
    *,
    entity: str = "orders",
    key: str | None = None,
    client: str | None = None,
    hostile: bool = True,
) -> str:
    """An event body as text: a valid envelope around valid or hostile data.

    A hostile event is, three times in four, hostile in one aspect only (one field,
    the key, the client id, the version or the time) and valid otherwise, so that each
    kind of value reaches the mapping and the sinks on its own; otherwise any aspect
    may be. ``hostile=False`` draws only events that meet the contract and its limits
    (the valid neighbours a batch must always apply).
    """
    if not hostile:
        odd: set[str] = set()
    elif draw(st.integers(0, 3)):
        odd = {draw(st.sampled_from(_ASPECTS))}
    else:
        odd = {a for a in _ASPECTS if not draw(st.integers(0, 4))}
    fields = {}
    for name in _FIELDS:
        if name in odd:
            fields[name] = draw(_odd_field(name))
        elif draw(st.integers(0, 5)):  # sometimes missing
            fields[name] = draw(_orders_field(name, hostile=False))
    data = "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in fields.items()) + "}"
    if key is None:
        key = draw(draw(st.sampled_from([texts, _odd_keys])) if "key" in odd else _keys)
    if client is None:
        client = draw(texts if "client" in odd else _clients)
    if "version" in odd:
        version = draw(st.sampled_from([2**70, -1, 2**53 + 1, 2**63, 2**53]))
    else:
        version = draw(st.integers(0, 100))
    envelope = {
        "event_id": draw(st.text(min_size=1, max_size=8)),
        "entity": entity,
        "op": draw(st.sampled_from(["upsert", "upsert", "upsert", "delete"])),
        "id": key,
        "client_id": client,
        "version": version,
        "occurred_at": draw(_odd_times) if "occurred_at" in odd else "2024-05-01T10:00:00Z",
    }
    head = json.dumps(envelope, ensure_ascii=False)[:-1]
    return head + f',"data":{data}' + "}"


def valid_event_bodies(**kwargs: Any) -> st.SearchStrategy[bytes]:
    """Bodies of events that meet the contract and every limit."""
    return event_texts(hostile=False, **kwargs).map(as_bytes)


#: Bodies that are not events at all.
garbage_bodies = any_of(
    st.binary(max_size=40),
    st.just(b"\xff\xfe not utf-8"),
    st.just(b"[" * 10_000 + b"]" * 10_000),
    st.just(b'{"data": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"),
    st.just(b"[]"),
    st.just(b"null"),
    st.just(b""),
)


def event_bodies(**kwargs: Any) -> st.SearchStrategy[bytes]:
    """Message bodies: mostly events (valid or hostile), some garbage.

    ``json.dumps`` may leave lone surrogates in the text (``ensure_ascii=False``); they
    are written as their escape so the body is still bytes a producer could send.
    """
    events = event_texts(**kwargs).map(as_bytes)
    return any_of(events, events, events, garbage_bodies)


#: What a message carries besides its body, hostile too: message ids, ordering keys
#: and attribute texts with NUL, lone surrogates, characters from U+100000 up, or
#: longer than any column.
message_texts = any_of(
    st.text(max_size=20),
    st.lists(
        any_of(st.sampled_from([*_TRICKY_CHARS, "\U00100000", "\U0010ffff"]), st.text(max_size=3)),
        min_size=1,
        max_size=6,
    ).map("".join),
    st.integers(2, 4).map(lambda n: "m" * (10**n)),
)


def as_bytes(text: str) -> bytes:
    """UTF-8 bytes of JSON text; a lone surrogate becomes its ``\\udXXX`` escape, which
    keeps the text valid JSON (``json.dumps(..., ensure_ascii=False)`` leaves them raw)."""
    return text.encode("utf-8", "backslashreplace")


@st.composite
def document_texts(draw: st.DrawFn, *, key: str | None = None, client: str = "acme") -> str:
    """One exported orders document as JSON text (a line of a RethinkDB export)."""
    fields = {}
    for name in _FIELDS:
        if draw(st.integers(0, 5)):
            fields[name] = draw(_orders_field(name))
    the_key = key if key is not None else draw(any_of(_keys, _keys, texts))
    head = {"id": the_key, "client_id": client, "version": draw(st.integers(0, 50))}
    text = json.dumps(head, ensure_ascii=False)[:-1]
    for name, value in fields.items():
        text += f",{json.dumps(name)}:{value}"
    return text + "}"


#: RethinkDB TIME objects as an export writes them, and some no server would write.
time_objects = st.sampled_from(
    [
        '{"$reql_type$":"TIME","epoch_time":1714557600.25,"timezone":"+00:00"}',
        '{"$reql_type$":"TIME","timezone":"+00:00"}',
        '{"$reql_type$":"TIME","epoch_time":1e300,"timezone":"+00:00"}',
        '{"$reql_type$":"TIME","epoch_time":"soon"}',
        '{"$reql_type$":"GEOMETRY","type":"Point","coordinates":[1,2]}',
        '{"at":{"$reql_type$":"TIME","epoch_time":5,"timezone":"+00:00"}}',
    ]
)

#: Lines of an export that are no document: not JSON, not UTF-8, nested past any
#: parser's reach, never closed, not an object.
broken_lines = st.sampled_from(
    [
        b'{"id": "broken", oops}',
        b"not json at all",
        b'{"id": "bytes-\xff\xfe", "client_id": "acme", "version": 1}',
        b'{"id": "unclosed", "x": [1, 2',
        b'{"id": "deep", "client_id": "acme", "version": 1, "x": '
        + b"[" * 10_000
        + b"]" * 10_000
        + b"}",
        b"[" * 10_000 + b"]" * 10_000,
        b"42",
    ]
)


@st.composite
def export_lines(draw: st.DrawFn, *, key: str | None = None, client: str = "acme") -> bytes:
    """One line of a RethinkDB export, as bytes: mostly a document (valid or hostile,
    sometimes with a TIME object in an odd place), sometimes a line that is no
    document at all."""
    kind = draw(st.sampled_from(["document", "document", "document", "time", "broken"]))
    if kind == "broken":
        return draw(broken_lines)
    text = draw(document_texts(key=key, client=client))
    if kind == "time":  # a later duplicate field wins, as in every parser used
        field = draw(st.sampled_from([*_FIELDS, "version", "extra"]))
        text = text[:-1] + f",{json.dumps(field)}:{draw(time_objects)}" + "}"
    return as_bytes(text)
