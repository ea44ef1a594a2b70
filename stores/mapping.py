"""Entity mapping: events and RethinkDB documents to typed rows, and back.

Both stores and every writer (the subscription handlers, the backfill, a replay)
speak :class:`Row`, so a type rule lives in exactly one place. Conversion is strict:
a value of the wrong type is an error naming the entity, key and field, never a
silent coercion, because a migration that guesses corrupts data quietly.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cutover.config import Column, ColumnType, Entity
from cutover.events import Event


class MappingError(ValueError):
    """A value cannot be mapped to its column; the message names where."""


@dataclass(frozen=True, slots=True)
class Row:
    """One entity instance as both stores hold it; a tombstone has ``deleted`` set.

    ``values`` maps column names to Python values (``str``, ``int``, ``float``,
    ``bool``, aware UTC ``datetime``, any JSON value, or ``None``).
    """

    key: str
    client_id: str
    version: int
    deleted: bool = False
    values: Mapping[str, Any] = field(default_factory=dict)

    @property
    def rank(self) -> tuple[int, bool]:
        """The order that decides which write wins: newer version, then delete over upsert."""
        return (self.version, self.deleted)


def _coerce(column: Column, value: Any) -> Any:
    """Check and normalise one value for its column type."""
    if value is None:
        if not column.nullable:
            raise ValueError("is null but the column is not nullable")
        return None
    kind = column.type
    if kind is ColumnType.STRING:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        if column.max_length is not None and len(value) > column.max_length:
            raise ValueError(f"is {len(value)} characters, longer than {column.max_length}")
        return value
    if kind is ColumnType.INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {type(value).__name__}")
        if not -(2**63) <= value < 2**63:
            raise ValueError("integer out of the 64-bit range")
        return value
    if kind is ColumnType.FLOAT:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError("NaN and infinity cannot be stored")
        return float(value)
    if kind is ColumnType.BOOL:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {type(value).__name__}")
        return value
    if kind is ColumnType.DATETIME:
        return parse_datetime(value)
    # JSON: anything json can carry; checked by serialising it.
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"is not JSON-serialisable: {exc}") from None
    return value


def parse_datetime(value: Any) -> datetime:
    """An aware UTC datetime from a datetime or an RFC 3339 string (naive means UTC)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"expected an RFC 3339 timestamp, got {value!r}") from None
    if not isinstance(value, datetime):
        raise ValueError(f"expected a timestamp, got {type(value).__name__}")
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def map_values(entity: Entity, data: Mapping[str, Any], *, key: str) -> dict[str, Any]:
    """Map a document's or event's data fields to column values, strictly typed."""
    values: dict[str, Any] = {}
    for column in entity.columns:
        try:
            values[column.name] = _coerce(column, data.get(column.field))
        except ValueError as exc:
            raise MappingError(f"{entity.name} {key!r}: field {column.field!r} {exc}") from None
    return values


def row_from_event(entity: Entity, event: Event) -> Row:
    """The row an event asks for; a delete carries no values."""
    if event.entity != entity.name:
        raise MappingError(f"event {event.event_id!r} is for {event.entity!r}, not {entity.name!r}")
    if event.op == "delete":
        return Row(event.id, event.client_id, event.version, True, _empty(entity))
    return Row(
        event.id,
        event.client_id,
        event.version,
        False,
        map_values(entity, event.data, key=event.id),
    )


def row_from_document(entity: Entity, doc: Mapping[str, Any]) -> Row:
    """The row a RethinkDB document holds; missing key, client or version is an error."""
    key = doc.get(entity.key)
    where = f"{entity.name} {key!r}" if key is not None else f"{entity.name} document"
    if not isinstance(key, str) or not key:
        raise MappingError(f"{where}: key field {entity.key!r} missing or not a non-empty string")
    client = doc.get(entity.client)
    if not isinstance(client, str) or not client:
        raise MappingError(f"{where}: client field {entity.client!r} missing or not a string")
    version = doc.get(entity.version)
    if isinstance(version, float) and version.is_integer():
        version = int(version)  # RethinkDB numbers are doubles on the wire
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise MappingError(f"{where}: version field {entity.version!r} missing or not an int >= 0")
    if doc.get(entity.deleted_marker):
        return Row(key, client, version, True, _empty(entity))
    data = dict(doc)
    for column in entity.columns:
        value = data.get(column.field)
        if column.type is ColumnType.INT and isinstance(value, float) and value.is_integer():
            data[column.field] = int(value)
    return Row(key, client, version, False, map_values(entity, data, key=key))


def document_from_row(entity: Entity, row: Row) -> dict[str, Any]:
    """The RethinkDB document for a row; tombstones keep key, client and version."""
    doc: dict[str, Any] = {entity.key: row.key, entity.client: row.client_id}
    doc[entity.version] = row.version
    if row.deleted:
        doc[entity.deleted_marker] = True
        return doc
    for column in entity.columns:
        value = row.values.get(column.name)
        if isinstance(value, datetime):
            value = value.astimezone(UTC)
        doc[column.field] = value
    return doc


def _empty(entity: Entity) -> dict[str, Any]:
    return {column.name: None for column in entity.columns}


FLOAT_TOLERANCE = 1e-9


def canonical(column: Column, value: Any) -> Any:
    """A comparable form of a value: what "the same" means across the two stores.

    Datetimes in UTC to the millisecond (RethinkDB keeps no finer), strings
    NFC-normalised, JSON with sorted keys
    and normalised strings; floats are compared with :func:`same_value`.
    """
    if value is None:
        return None
    if column.type is ColumnType.DATETIME:
        return parse_datetime(value).isoformat(timespec="milliseconds")
    if column.type is ColumnType.STRING:
        return unicodedata.normalize("NFC", value)
    if column.type is ColumnType.JSON:
        return json.dumps(_nfc(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return value


def _nfc(value: Any) -> Any:
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, list):
        return [_nfc(v) for v in value]
    if isinstance(value, dict):
        return {unicodedata.normalize("NFC", k): _nfc(v) for k, v in value.items()}
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 1.0 from one store, 1 from the other
    return value


def same_value(column: Column, a: Any, b: Any) -> bool:
    """Whether two values of one column are equal after canonicalisation."""
    ca, cb = canonical(column, a), canonical(column, b)
    if column.type is ColumnType.FLOAT and ca is not None and cb is not None:
        return math.isclose(ca, cb, rel_tol=FLOAT_TOLERANCE, abs_tol=FLOAT_TOLERANCE)
    return bool(ca == cb)


def differing_fields(entity: Entity, old: Row, new: Row) -> list[str]:
    """Columns whose values differ between two rows of one entity (client included)."""
    fields = [] if old.client_id == new.client_id else [entity.client]
    fields += [
        c.name
        for c in entity.columns
        if not same_value(c, old.values.get(c.name), new.values.get(c.name))
    ]
    return fields
