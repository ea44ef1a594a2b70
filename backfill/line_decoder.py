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
test_line_decoder.py`` compares the two on generated documents.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from msgspec.structs import astuple

from cutover.config import Column, ColumnType, Entity
from stores.mapping import Row, parse_datetime

#: Decodes one document's JSON text; None means "use the reference path".
LineDecoder = Callable[[bytes], Row | None]
#: Decodes a JSON array of documents into values lists; None: "one by one, please".
BlockDecoder = Callable[[bytes], list[list[Any]] | None]

_I64 = msgspec.Meta(ge=-(2**63), le=2**63 - 1)
_NON_EMPTY = msgspec.Meta(min_length=1)


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
        t = Annotated[int, _I64]
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
        ("f_key", Annotated[str, _NON_EMPTY]),
        ("f_client", Annotated[str, _NON_EMPTY]),
        ("f_version", Annotated[int, msgspec.Meta(ge=0)]),
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


def line_decoder(entity: Entity) -> LineDecoder | None:
    """The entity's fast path for one line, or None when it has none."""
    struct = _document_struct(entity)
    if struct is None:
        return None
    decode = msgspec.json.Decoder(struct).decode
    finish = _finisher(entity)
    names = tuple(c.name for c in entity.columns)

    def decode_line(text: bytes) -> Row | None:
        try:
            values = finish(list(astuple(decode(text))))
        except (msgspec.DecodeError, UnicodeDecodeError):
            return None
        if values is None:
            return None
        key, client, version, deleted, *columns = values
        return Row(key, client, version, deleted, dict(zip(names, columns, strict=True)))

    return decode_line


def block_decoder(entity: Entity) -> BlockDecoder | None:
    """The entity's fast path for many lines at once, or None when it has none.

    Given the text of a JSON array of documents, it returns each one's values (key,
    client id, version, deleted, then the entity's columns in order: what
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

    def decode_block(text: bytes) -> list[list[Any]] | None:
        try:
            documents = decode(text)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return None
        out = []
        for document in documents:
            values = finish(list(astuple(document)))
            if values is None:
                return None
            out.append(values)
        return out

    return decode_block


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
