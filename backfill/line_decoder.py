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

The contract's limits (:mod:`core.limits`) are the mapping's too, so the fast path
never takes what they refuse, and checks them mostly in msgspec's own pass: the
struct declares the identity and INT limits (2**53, the key length), msgspec refuses
lone surrogates and numbers out of range, and a JSON column's type is JSON spelled
out to ``TYPED_LEVELS`` levels with integers within +/- 2**53 and arrays of at most
``MAX_ARRAY_ITEMS`` items. What is left:

* ``\\u0000`` anywhere (a NUL in some string; JSON cannot spell one otherwise) is
  found by one byte search and declined;
* a document the typed decoder refuses (perhaps only because a value nests past the
  typed levels) is decoded again with untyped JSON columns, whose values are then
  walked with :func:`~core.limits.check_json`, exactly as the mapping walks them;
  anything refused again is left to the reference path.

(Typing all ``MAX_DEPTH`` levels would leave nothing to walk, but msgspec walks such a
type as a tree: its decoder would take seconds to build.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, NewType

import msgspec
from msgspec.structs import astuple

from core.config import Column, ColumnType, Entity
from core.limits import (
    MAX_ARRAY_ITEMS,
    MAX_CLIENT_ID_CHARS,
    MAX_SAFE_INTEGER,
    LimitError,
    check_json,
)
from stores.mapping import Row, parse_datetime

#: Decodes one document's JSON text; None means "use the reference path".
LineDecoder = Callable[[bytes], Row | None]
#: Decodes whole-document lines (each ending with its ``,`` and line break, as an
#: export holds them) into values lists; None: "one by one, please".
BlockDecoder = Callable[[Sequence[bytes]], list[list[Any]] | None]

#: A NUL in any string of the text (JSON can only spell it so: raw, it is an error).
_NUL = b"\\u0000"
#: Levels of a JSON value whose integers and array sizes msgspec checks itself.
TYPED_LEVELS = 8

#: Integers a double keeps exactly: the mapping's range for INT columns and versions.
_SAFE = msgspec.Meta(ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER)


def _json_type(levels: int) -> Any:
    """JSON values nested at most ``levels`` deep, with the limits' integers and array
    sizes. Each level is a NewType: typing hashes a nested union by walking it whole,
    a NewType by identity."""
    scalar: Any = None | bool | Annotated[int, _SAFE] | float | str
    level_type: Any = NewType  # made at run time (mypy wants NewType's name as a literal)
    t: Any = scalar
    for level in range(1, levels + 1):
        items = Annotated[list[t], msgspec.Meta(max_length=MAX_ARRAY_ITEMS)]
        t = level_type(f"JsonLevel{level}", scalar | items | dict[str, t])
    return t


#: A JSON column's value as msgspec checks it (deeper values: see the module's notes).
_JSON = _json_type(TYPED_LEVELS)


class _Time(msgspec.Struct, rename={"reql_type": "$reql_type$"}):
    """The export's raw time value, ``{"$reql_type$": "TIME", "epoch_time": ...}``."""

    reql_type: str
    epoch_time: float


def _column_type(column: Column, json_type: Any) -> Any:
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
        t = json_type  # the mapping's null check for a non-nullable JSON column is below
    return t | None if column.nullable else t


def _document_struct(entity: Entity, json_type: Any = _JSON) -> type[msgspec.Struct] | None:
    """The entity's documents as a msgspec struct, fields in the order of the values
    lists: key, client, version, deleted marker, then the entity's columns (a JSON
    column of ``json_type``). None when its fields cannot be declared to msgspec (two
    columns reading one field, say)."""
    fixed = [entity.key, entity.client, entity.version, entity.deleted_marker]
    sources = [*fixed, *(c.field for c in entity.columns)]
    if len(set(sources)) != len(sources):
        return None
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        ("f_key", Annotated[str, msgspec.Meta(min_length=1, max_length=entity.key_max_length)]),
        ("f_client", Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CLIENT_ID_CHARS)]),
        ("f_version", Annotated[int, msgspec.Meta(ge=0, le=MAX_SAFE_INTEGER)]),
        ("f_deleted", Any, None),
    ]
    rename = dict(zip(("f_key", "f_client", "f_version", "f_deleted"), fixed, strict=True))
    for i, column in enumerate(entity.columns):
        name = f"c{i}"
        rename[name] = column.field
        if column.nullable:
            fields.append((name, _column_type(column, json_type), None))
        else:  # required: a missing field is an error, as the mapping's null check is
            fields.append((name, _column_type(column, json_type)))
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
    decoders = _decoders(entity, lambda struct: struct)
    if decoders is None:
        return None
    typed, untyped, walk = decoders
    finish = _finisher(entity)
    names = tuple(c.name for c in entity.columns)

    def decode_line(text: bytes) -> Row | None:
        if _NUL in text:
            return None
        try:
            values = finish(list(astuple(typed(text))))
        except _DECLINED:
            if walk is None:
                return None
            try:  # perhaps nested past the typed levels: untyped, then walked
                values = finish(list(astuple(untyped(text))))
            except _DECLINED:
                return None
            if values is not None and not walk(values):
                return None
        if values is None:
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
    decoders = _decoders(entity, lambda struct: list[struct])  # type: ignore[valid-type]
    if decoders is None:
        return None
    typed, untyped, walk = decoders
    finish = _finisher(entity)

    def decode_block(lines: Sequence[bytes]) -> list[list[Any]] | None:
        joined = b"".join(lines)
        if _NUL in joined:
            return None
        text = b"[" + joined.rstrip().rstrip(b",") + b"]"
        walked = False
        try:
            documents = typed(text)
        except _DECLINED:
            if walk is None:
                return None
            try:  # perhaps a document nested past the typed levels: untyped, then walked
                documents, walked = untyped(text), True
            except _DECLINED:
                return None
        out = []
        for document in documents:
            values = finish(list(astuple(document)))
            if values is None or (walked and walk is not None and not walk(values)):
                return None
            out.append(values)
        return out

    return decode_block


def _decoders(
    entity: Entity, shape: Callable[[Any], Any]
) -> (
    tuple[Callable[[bytes], Any], Callable[[bytes], Any], Callable[[list[Any]], bool] | None] | None
):
    """The entity's decoder with JSON columns typed to ``TYPED_LEVELS``, the one with
    JSON columns untyped (for documents that may nest deeper, walked after), and the
    walk (None, and one decoder twice, when the entity has no JSON column)."""
    typed = _document_struct(entity)
    if typed is None:
        return None
    decode = msgspec.json.Decoder(shape(typed)).decode
    walk = _json_walk(entity)
    if walk is None:
        return decode, decode, None
    untyped = _document_struct(entity, Any)
    assert untyped is not None  # the same fields as the typed one
    return decode, msgspec.json.Decoder(shape(untyped)).decode, walk


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
    return parse_datetime(datetime.fromtimestamp(value.epoch_time, tz=UTC))  # its range


def _json_value(value: Any) -> Any:
    """A top-level TIME object becomes a datetime on the reference path (an error)."""
    if type(value) is dict and "$reql_type$" in value:
        return _UNSURE
    return value
