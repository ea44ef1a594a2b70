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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import msgspec

from core.config import Column, ColumnType, Entity
from core.limits import (
    MAX_CLIENT_ID_CHARS,
    MAX_SAFE_INTEGER,
    LimitError,
    check_json,
    check_text,
    check_time,
)

if TYPE_CHECKING:  # the event model is pydantic: not needed to map documents
    from core.events import Event


class MappingError(ValueError):
    """A value cannot be mapped to its column; the message names where."""


class Row(msgspec.Struct, frozen=True, gc=False):
    """One entity instance as both stores hold it; a tombstone has ``deleted`` set.

    ``values`` maps column names to Python values (``str``, ``int``, ``float``,
    ``bool``, aware UTC ``datetime``, any JSON value, or ``None``).

    A msgspec struct rather than a dataclass: a row is made per document and per
    event, and a struct is built in C (0.06 us, against 0.36 for the frozen slots
    dataclass it replaced, measured here). It checks no types when built, as the
    dataclass did not either; the mapping has checked the values. ``gc=False``: rows
    hold JSON-like values, never cycles, so the collector need not track millions.
    """

    key: str
    client_id: str
    version: int
    deleted: bool = False
    values: Mapping[str, Any] = {}

    @property
    def rank(self) -> tuple[int, bool]:
        """The order that decides which write wins: newer version, then delete over upsert."""
        return (self.version, self.deleted)


Check = Callable[[Any], Any]


def _checker(column: Column) -> Check:
    """The check-and-normalise function of one column, with the type dispatch done once.

    Mapping runs for every event and every backfilled document, so the per-value work
    is a type test and nothing else; the error messages say what was expected.
    """
    kind, max_length = column.type, column.max_length
    check: Check
    if kind is ColumnType.STRING:

        def check(value: Any) -> Any:
            if not isinstance(value, str):
                raise ValueError(f"expected a string, got {type(value).__name__}")
            if max_length is not None and len(value) > max_length:
                raise ValueError(f"is {len(value)} characters, longer than {max_length}")
            check_text(value)
            return value

    elif kind is ColumnType.INT:

        def check(value: Any) -> Any:
            if type(value) is not int and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"expected an integer, got {type(value).__name__}")
            if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
                # RethinkDB keeps numbers as doubles: a larger integer would be stored
                # as another number there, and the stores would diverge.
                raise ValueError("is an integer beyond +/- 2**53 (not exact in a double)")
            return value

    elif kind is ColumnType.FLOAT:

        def check(value: Any) -> Any:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"expected a number, got {type(value).__name__}")
            try:
                number = float(value)
            except OverflowError:  # an integer beyond the largest double
                raise ValueError("is a number out of the range of a double") from None
            if not math.isfinite(number):
                raise ValueError("NaN and infinity cannot be stored")
            return number

    elif kind is ColumnType.BOOL:

        def check(value: Any) -> Any:
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {type(value).__name__}")
            return value

    elif kind is ColumnType.DATETIME:
        check = parse_datetime
    else:
        check = _check_json
    if column.nullable:
        return lambda value: None if value is None else check(value)

    def not_null(value: Any) -> Any:
        if value is None:
            raise ValueError("is null but the column is not nullable")
        return check(value)

    return not_null


def _check_json(value: Any) -> Any:
    """JSON columns take any JSON value within the contract's limits (:mod:`core.limits`)."""
    if value is True or value is False:
        return value
    check_json(value)
    return value


def parse_datetime(value: Any) -> datetime:
    """An aware UTC datetime from a datetime or an RFC 3339 string (naive means UTC),
    within the range both stores keep exactly (:func:`core.limits.check_time`)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"expected an RFC 3339 timestamp, got {value!r}") from None
    if not isinstance(value, datetime):
        raise ValueError(f"expected a timestamp, got {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    elif value.tzinfo is not UTC:
        try:
            value = value.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+01:00 or 9999-12-31T23:59-01:00
            raise ValueError(f"timestamp {value.isoformat()} is out of range in UTC") from None
    check_time(value)
    return value


@dataclass(frozen=True, slots=True)
class _Compiled:
    """An entity's columns as (column name, source field, check, float-to-int)."""

    entity: Entity
    columns: tuple[tuple[str, str, Check, bool], ...]
    empty: Mapping[str, None]


_compiled: dict[int, _Compiled] = {}


def _compile(entity: Entity) -> _Compiled:
    """The entity's checks, built once per Entity object (they are immutable)."""
    found = _compiled.get(id(entity))
    if found is not None and found.entity is entity:
        return found
    made = _Compiled(
        entity,
        tuple((c.name, c.field, _checker(c), c.type is ColumnType.INT) for c in entity.columns),
        MappingProxyType({c.name: None for c in entity.columns}),
    )
    _compiled[id(entity)] = made
    return made


def map_values(
    entity: Entity, data: Mapping[str, Any], *, key: str, floats_as_ints: bool = False
) -> dict[str, Any]:
    """Map a document's or event's data fields to column values, strictly typed.

    ``floats_as_ints`` accepts integral floats in integer columns: RethinkDB numbers
    are doubles on the wire, so a document's ``3`` may arrive as ``3.0``.
    """
    values: dict[str, Any] = {}
    get = data.get
    for name, source, check, is_int in _compile(entity).columns:
        value = get(source)
        if floats_as_ints and is_int and type(value) is float and value.is_integer():
            value = int(value)
        try:
            values[name] = check(value)
        except ValueError as exc:
            raise MappingError(f"{entity.name} {key!r}: field {source!r} {exc}") from None
    return values


def check_identity(entity: Entity, key: str, client_id: str) -> None:
    """A key and a client id the stores and the API can all carry (:mod:`core.limits`).

    The key also fits the SQL key column (``key_max_length``): RethinkDB would take a
    longer one that the SQL store refuses, and the stores would diverge.
    """
    if len(key) > entity.key_max_length:
        raise MappingError(
            f"{entity.name} {key[:80]!r}...: the key is {len(key)} characters, "
            f"longer than {entity.key_max_length} (the entity's key_max_length)"
        )
    if len(client_id) > MAX_CLIENT_ID_CHARS:
        raise MappingError(
            f"{entity.name} {key[:80]!r}: the client id is {len(client_id)} characters, "
            f"longer than {MAX_CLIENT_ID_CHARS}"
        )
    for what, value in (("key", key), ("client id", client_id)):
        try:
            check_text(value)
        except LimitError as exc:
            raise MappingError(f"{entity.name} {value!r:.80}: the {what} {exc}") from None


def _check_version(entity: Entity, key: str, version: int) -> None:
    """Versions up to 2**53: RethinkDB compares them as doubles, so two larger versions
    could compare equal there and the stores would apply different rows."""
    if version > MAX_SAFE_INTEGER:
        raise MappingError(f"{entity.name} {key!r:.80}: version {version} is beyond 2**53")


def row_from_event(entity: Entity, event: Event) -> Row:
    """The row an event asks for; a delete carries no values."""
    if event.entity != entity.name:
        raise MappingError(f"event {event.event_id!r} is for {event.entity!r}, not {entity.name!r}")
    check_identity(entity, event.id, event.client_id)
    _check_version(entity, event.id, event.version)
    if event.op == "delete":
        return Row(event.id, event.client_id, event.version, True, tombstone_values(entity))
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
    check_identity(entity, key, client)
    version = doc.get(entity.version)
    if isinstance(version, float) and version.is_integer():
        version = int(version)  # RethinkDB numbers are doubles on the wire
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise MappingError(f"{where}: version field {entity.version!r} missing or not an int >= 0")
    _check_version(entity, key, version)
    if doc.get(entity.deleted_marker):
        return Row(key, client, version, True, tombstone_values(entity))
    return Row(key, client, version, False, map_values(entity, doc, key=key, floats_as_ints=True))


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


def tombstone_values(entity: Entity) -> dict[str, Any]:
    """A tombstone's values: every column, all None."""
    return dict(_compile(entity).empty)


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
