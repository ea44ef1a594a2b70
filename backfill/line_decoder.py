"""A fast path from one exported document's JSON text straight to its :class:`Row`.

The reference path parses the text into Python objects (``jsontext.loads``), turns
top-level TIME objects into datetimes (``sources.native``) and maps the document
(``stores.mapping.row_from_document``): three passes over every document, and most of
a backfill's CPU time. Here msgspec decodes the text into a struct that already has
the column types, in one pass in C.

It is a fast path only, never a second set of rules: every type it declares is at
least as strict as the mapping, so whatever it accepts, the reference path would map
to the same row; whatever it is unsure of (a failed check, an integral float in an
integer column, a TIME object inside a JSON column, lone surrogates, a number out of
range, a tombstone with odd fields) it hands back as ``None`` for the reference path
to decide, with the reference path's error message. ``tests/backfill/
test_line_decoder.py`` compares the two on generated documents, hostile ones included.

The contract's limits (:mod:`cutover.limits`) are the mapping's too, so the fast path
never takes what they refuse. msgspec itself refuses lone surrogates and numbers out
of range, and the struct declares the identity and INT limits (2**53, the key
length); the rest is settled by tests on the bytes, so the common document costs no
walk over its values:

* ``\\u0000`` anywhere (a NUL in some string; JSON cannot spell one otherwise): declined;
* a JSON column's value is walked with :func:`~cutover.limits.check_json`, exactly as
  the mapping walks it, only when its document's text might break a limit: more
  brackets than ``MAX_DEPTH + 1`` (the document's own object and the deepest value
  allowed; a count of brackets bounds the depth), a run of 16 digits or more (every
  integer beyond 2**53 has one), or a line long enough to hold an array of more than
  ``MAX_ARRAY_ITEMS`` items.

(A JSON type spelled out to ``MAX_DEPTH`` levels would let msgspec check all of it in
C, but building its decoder costs seconds: msgspec walks such a type as a tree.)
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from itertools import accumulate
from typing import Annotated, Any

import msgspec
from msgspec.structs import astuple

from cutover.config import Column, ColumnType, Entity
from cutover.limits import MAX_ARRAY_ITEMS, MAX_DEPTH, MAX_SAFE_INTEGER, LimitError, check_json
from stores.mapping import Row, parse_datetime

#: Decodes one document's JSON text; None means "use the reference path".
LineDecoder = Callable[[bytes], Row | None]
#: Decodes whole-document lines (each ending with its ``,`` and line break, as an
#: export holds them) into values lists; None: "one by one, please".
BlockDecoder = Callable[[Sequence[bytes]], list[list[Any]] | None]

#: A NUL in any string of the text (JSON can only spell it so: raw, it is an error).
_NUL = b"\\u0000"
#: Openers (of arrays and objects) as "[", line breaks kept, every other byte deleted.
_OPENERS = bytes.maketrans(b"{", b"[")
_NOT_OPENERS = bytes(b for b in range(256) if b not in b"[{\n")
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
#: 16 digits: 2**53 has 16, and any number with fewer is below 10**15.
_LONG_INTEGER = b"0" * 16
#: A line no longer than this cannot hold an array of more than MAX_ARRAY_ITEMS items.
_LONG_LINE = 2 * MAX_ARRAY_ITEMS
#: The document's own object, then the deepest value allowed.
_MOST_OPENERS = MAX_DEPTH + 1
_TOO_MANY_OPENERS = b"[" * (_MOST_OPENERS + 1)

#: Integers a double keeps exactly: the mapping's range for INT columns and versions.
_SAFE = msgspec.Meta(ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER)


class _Time(msgspec.Struct, rename={"reql_type": "$reql_type$"}):
    """The export's raw time value, ``{"$reql_type$": "TIME", "epoch_time": ...}``."""

    reql_type: str
    epoch_time: float


def _column_type(column: Column) -> Any:
    """The msgspec type of a column: the mapping's rule, or stricter."""
    kind = column.type
    t: Any
    if kind is ColumnType.STRING:
        t = Annotated[str, msgspec.Meta(max_length=column.max_length)] if column.max_length else str
    elif kind is ColumnType.INT:
        t = Annotated[int, _SAFE]
    elif kind is ColumnType.FLOAT:
        t = float  # accepts JSON integers, as the mapping does; out-of-range numbers fail
    elif kind is ColumnType.BOOL:
        t = bool
    elif kind is ColumnType.DATETIME:
        t = str | _Time  # the text is parsed by the mapping's own parse_datetime
    else:
        t = Any  # the mapping's null check for a non-nullable JSON column is below
    return t | None if column.nullable else t


def _document_struct(entity: Entity) -> type[msgspec.Struct] | None:
    """The entity's documents as a msgspec struct, fields in the order of the values
    lists: key, client, version, deleted marker, then the entity's columns. None when
    its fields cannot be declared to msgspec (two columns reading one field, say)."""
    fixed = [entity.key, entity.client, entity.version, entity.deleted_marker]
    sources = [*fixed, *(c.field for c in entity.columns)]
    if len(set(sources)) != len(sources):
        return None
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        ("f_key", Annotated[str, msgspec.Meta(min_length=1, max_length=entity.key_max_length)]),
        ("f_client", Annotated[str, msgspec.Meta(min_length=1)]),
        ("f_version", Annotated[int, msgspec.Meta(ge=0, le=MAX_SAFE_INTEGER)]),
        ("f_deleted", Any, None),
    ]
    rename = dict(zip(("f_key", "f_client", "f_version", "f_deleted"), fixed, strict=True))
    for i, column in enumerate(entity.columns):
        name = f"c{i}"
        rename[name] = column.field
        if column.nullable:
            fields.append((name, _column_type(column), None))
        else:  # required: a missing field is an error, as the mapping's null check is
            fields.append((name, _column_type(column)))
    struct = msgspec.defstruct(f"{entity.name}_document", fields, rename=rename, kw_only=True)
    if struct.__struct_fields__[4:] != tuple(f"c{i}" for i in range(len(entity.columns))):
        return None  # field order is what astuple() relies on
    return struct


def _finisher(entity: Entity) -> Callable[[list[Any]], list[Any] | None]:
    """What a decoded document's values still need to be the mapping's values: a
    tombstone's columns emptied, datetimes parsed, TIME objects in JSON declined."""
    convert = [(4 + at, fix) for at, fix in _conversions(entity.columns)]
    empty = [None] * len(entity.columns)

    def finish(values: list[Any]) -> list[Any] | None:
        if values[3]:
            return [*values[:3], True, *empty]
        values[3] = False
        for at, fix in convert:
            value = values[at]
            if value is not None:
                try:
                    value = fix(value)
                except (ValueError, TypeError, OverflowError, OSError):
                    return None
                if value is _UNSURE:
                    return None
                values[at] = value
        return values

    return finish


#: What msgspec raises on text it declines (RecursionError: nested past its reach).
_DECLINED = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def line_decoder(entity: Entity) -> LineDecoder | None:
    """The entity's fast path for one line, or None when it has none."""
    struct = _document_struct(entity)
    if struct is None:
        return None
    decode = msgspec.json.Decoder(struct).decode
    finish = _finisher(entity)
    walk = _json_walk(entity)
    names = tuple(c.name for c in entity.columns)

    def decode_line(text: bytes) -> Row | None:
        if _NUL in text:
            return None
        try:
            values = finish(list(astuple(decode(text))))
        except _DECLINED:
            return None
        if values is None or (walk is not None and not _certain(text) and not walk(values)):
            return None
        key, client, version, deleted, *columns = values
        return Row(key, client, version, deleted, dict(zip(names, columns, strict=True)))

    return decode_line


def block_decoder(entity: Entity) -> BlockDecoder | None:
    """The entity's fast path for many lines at once, or None when it has none.

    Given whole-document lines, it returns each one's values (key, client id, version,
    deleted, then the entity's columns in order: what
    :meth:`~stores.sql.store.RowEncoder.prepare_values` takes), with one decoder call
    and no row objects: about half the reader's CPU time per document. All or nothing:
    None as soon as one document is not certain, and the caller reads the block again
    document by document.
    """
    struct = _document_struct(entity)
    if struct is None:
        return None
    decode = msgspec.json.Decoder(list[struct]).decode  # type: ignore[valid-type]
    finish = _finisher(entity)
    walk = _json_walk(entity)

    def decode_block(lines: Sequence[bytes]) -> list[list[Any]] | None:
        joined = b"".join(lines)
        if _NUL in joined:
            return None
        unsure = _unsure_lines(joined, lines) if walk is not None else ()
        try:
            documents = decode(b"[" + joined.rstrip().rstrip(b",") + b"]")
        except _DECLINED:
            return None
        out = []
        for document in documents:
            values = finish(list(astuple(document)))
            if values is None:
                return None
            out.append(values)
        if walk is not None and not all(walk(out[i]) for i in unsure if i < len(out)):
            return None
        return out

    return decode_block


def _certain(text: bytes) -> bool:
    """True when no JSON value in this document's text can break a limit (see above)."""
    return (
        len(text) <= _LONG_LINE
        and text.count(b"[") + text.count(b"{") <= _MOST_OPENERS
        and _LONG_INTEGER not in text.translate(_DIGITS_AS_ZERO)
    )


def _unsure_lines(joined: bytes, lines: Sequence[bytes]) -> set[int] | tuple[()]:
    """The lines of a block whose JSON values must be walked: :func:`_certain` for
    every line at once, in a few C-level passes over the block (each line ends with
    its line break, and JSON text holds no other)."""
    openers = joined.translate(_OPENERS, _NOT_OPENERS)
    digits = joined.translate(_DIGITS_AS_ZERO)
    long_lines = max(map(len, lines), default=0) > _LONG_LINE
    if _TOO_MANY_OPENERS not in openers and _LONG_INTEGER not in digits and not long_lines:
        return ()
    unsure = {i for i, found in enumerate(openers.split(b"\n")) if len(found) > _MOST_OPENERS}
    unsure.update(i for i, line in enumerate(lines) if len(line) > _LONG_LINE)
    ends = list(accumulate(map(len, lines)))
    at = digits.find(_LONG_INTEGER)
    while at >= 0:
        i = bisect_right(ends, at)
        unsure.add(i)
        at = digits.find(_LONG_INTEGER, ends[i]) if i < len(ends) else -1
    return unsure


def _json_walk(entity: Entity) -> Callable[[list[Any]], bool] | None:
    """Whether a decoded document's JSON column values are within the limits, walked as
    the mapping walks them; None when the entity has no JSON column."""
    positions = [4 + i for i, c in enumerate(entity.columns) if c.type is ColumnType.JSON]
    if not positions:
        return None

    def walk(values: list[Any]) -> bool:
        try:
            for at in positions:
                value = values[at]
                if value is not None and value is not True and value is not False:
                    check_json(value)
        except LimitError:
            return False
        return True

    return walk


_UNSURE = object()


def _conversions(columns: tuple[Column, ...]) -> list[tuple[int, Callable[[Any], Any]]]:
    """Per column (by position), what the struct's value still needs to become the
    mapping's value."""
    out: list[tuple[int, Callable[[Any], Any]]] = []
    for at, column in enumerate(columns):
        if column.type is ColumnType.DATETIME:
            out.append((at, _datetime))
        elif column.type is ColumnType.JSON:
            out.append((at, _json_value))
    return out


def _datetime(value: str | _Time) -> Any:
    if isinstance(value, str):
        return parse_datetime(value)
    if value.reql_type != "TIME":
        return _UNSURE
    return datetime.fromtimestamp(value.epoch_time, tz=UTC)


def _json_value(value: Any) -> Any:
    """A top-level TIME object becomes a datetime on the reference path (an error)."""
    if type(value) is dict and "$reql_type$" in value:
        return _UNSURE
    return value
