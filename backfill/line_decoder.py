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
from stores.mapping import Row, parse_datetime, tombstone_values

#: Decodes one document's JSON text; None means "use the reference path".
LineDecoder = Callable[[bytes], Row | None]

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


def line_decoder(entity: Entity) -> LineDecoder | None:
    """The entity's fast path, or None when its fields cannot be declared to msgspec.

    (Two columns reading the same source field, say: the reference path handles that.)
    """
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
        return None  # field order is what astuple() below relies on
    decode = msgspec.json.Decoder(struct).decode
    convert = _conversions(entity.columns)
    names = tuple(c.name for c in entity.columns)

    def decode_line(text: bytes) -> Row | None:
        try:
            key, client, version, deleted, *columns = astuple(decode(text))
        except (msgspec.DecodeError, UnicodeDecodeError):
            return None
        if deleted:
            return Row(key, client, version, True, tombstone_values(entity))
        for at, fix in convert:
            value = columns[at]
            if value is not None:
                try:
                    value = fix(value)
                except (ValueError, TypeError, OverflowError, OSError):
                    return None
                if value is _UNSURE:
                    return None
                columns[at] = value
        return Row(key, client, version, False, dict(zip(names, columns, strict=True)))

    return decode_line


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
