"""One read model over both stores: same response, same cursor, whichever store serves.

A page is the client's live items (tombstones excluded) in key order after a cursor;
the cursor is opaque to callers but is just the last key served, so a caller moved from
one store to the other mid-listing continues exactly where it was. Both paths ask for
``limit + 1`` live items to know whether another page exists, so ``next_cursor`` is
None exactly when the listing is complete, in both stores.

Values are presented the way both stores can hold them: datetimes in UTC to the
millisecond (RethinkDB keeps no finer), integral numbers inside JSON as integers
(RethinkDB has only doubles), so a client sees the same bytes before and after cutover.

Every live row read from either store passes one check before it is served
(:meth:`ReadModel._served`): it must map to the entity and stay within the contract's
limits (:mod:`core.limits`), as everything written through cutover does. A row that
does not (written around cutover, or before the limits existed) raises
:class:`StoredValueInvalid` naming the entity, key and field, never the value: the API
answers 503 for that item, and for any page that would hold it. So presenting and
serialising a row only ever walks values of bounded depth.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from prometheus_client import Counter

from core.config import ColumnType, Entity
from stores.mapping import (
    MappingError,
    Row,
    check_identity,
    map_values,
    parse_datetime,
    row_from_document,
)
from stores.rethink import RethinkStore
from stores.runtime import Runtime
from stores.sql import SqlStore

log = logging.getLogger(__name__)

StoreName = Literal["old", "new"]

INVALID = Counter(
    "cutover_read_invalid_stored_values_total",
    "Stored items not served because they do not map or exceed the contract's limits",
    ["entity", "store"],
)
#: Longest reason given for an invalid stored item (it names a key, never a value).
_REASON_CHARS = 500


class StoredValueInvalid(Exception):
    """A stored item that cannot be served; ``reason`` names entity, key and field."""

    def __init__(self, store: StoreName, reason: str) -> None:
        super().__init__(reason)
        self.store = store
        self.reason = reason


class InvalidCursor(ValueError):
    """The cursor was not produced by this API."""


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        raise InvalidCursor(f"invalid cursor {cursor[:40]!r}") from None
    if not key or encode_cursor(key) != cursor:
        raise InvalidCursor(f"invalid cursor {cursor[:40]!r}")
    return key


@dataclass(frozen=True)
class Page:
    rows: list[Row]
    #: The last key served when another page exists, else None.
    next_after: str | None


def _plain_json(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_plain_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain_json(v) for k, v in value.items()}
    return value


def present(entity: Entity, row: Row) -> dict[str, Any]:
    """The response body of one item: key, client, version and the mapped fields."""
    fields: dict[str, Any] = {}
    for column in entity.columns:
        value = row.values.get(column.name)
        if value is not None and column.type is ColumnType.DATETIME:
            value = _iso(parse_datetime(value))
        elif value is not None and column.type is ColumnType.JSON:
            value = _plain_json(value)
        fields[column.name] = value
    return {"key": row.key, "client": row.client_id, "version": row.version, "fields": fields}


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ReadModel:
    """Pages and items of one client from either store, as :class:`Row`.

    ``sql`` and ``rethink`` default to the runtime's stores; the read API passes stores
    of its own, with the read deadlines and pool sizes.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        sql: SqlStore | None = None,
        rethink: RethinkStore | None = None,
    ) -> None:
        self.runtime = runtime
        self._sql = sql
        self._rethink = rethink

    @property
    def sql(self) -> SqlStore:
        return self._sql if self._sql is not None else self.runtime.sql

    @property
    def rethink(self) -> RethinkStore:
        return self._rethink if self._rethink is not None else self.runtime.rethink

    def close(self) -> None:
        """Close the stores this model was given (the runtime closes its own)."""
        for store in (self._sql, self._rethink):
            if store is not None:
                store.close()

    def page(
        self, store: StoreName, entity: Entity, client_id: str, after: str | None, limit: int
    ) -> Page:
        """``limit`` live items after ``after``, checked; the look-ahead item (it only
        says whether another page exists) is served, and checked, by the next page."""
        if store == "new":
            with _decoding("new", entity):
                rows = self.sql.page(entity, client_id, after=after, limit=limit + 1)
            page = _cut(rows, limit)
            for row in page.rows:
                self._served("new", entity, row)
            return page
        return self._old_page(entity, client_id, after, limit)

    def _old_page(self, entity: Entity, client_id: str, after: str | None, limit: int) -> Page:
        """Live documents after ``after``: RethinkDB pages include tombstones, so read on
        until ``limit + 1`` live ones are found or the client's range ends. A look-ahead
        document that does not map counts as one more item (whether it is live cannot
        be known); the page that would serve it answers 503."""
        live: list[Row] = []
        position = after
        batch = limit + 1
        while len(live) <= limit:
            with _decoding("old", entity):
                docs = self.rethink.page(entity, client_id, after=position, limit=batch)
            for doc in docs:
                try:
                    row = row_from_document(entity, doc)
                except MappingError as exc:
                    if len(live) == limit:
                        return Page(live, live[-1].key)
                    raise _invalid("old", entity, exc) from None
                if not row.deleted:
                    live.append(row)
                if len(live) > limit:
                    break
            if len(docs) < batch:
                break
            position = docs[-1][entity.key]
        return _cut(live, limit)

    def item(self, store: StoreName, entity: Entity, client_id: str, key: str) -> Row | None:
        """One live item of this client; None if absent, deleted or another client's.

        A stored item that cannot be served raises :class:`StoredValueInvalid`.
        """
        row: Row | None
        with _decoding(store, entity, key):
            if store == "new":
                row = self.sql.get(entity, key)
            else:
                doc = self.rethink.get(entity, key)
                row = self._from_document(entity, doc) if doc is not None else None
        if row is None or row.deleted or row.client_id != client_id:
            return None
        return self._served(store, entity, row)

    def rows_for(
        self, store: StoreName, entity: Entity, client_id: str, keys: list[str]
    ) -> dict[str, Row]:
        """Live rows of these keys for this client, by key (for re-checks)."""
        with _decoding(store, entity):
            if store == "new":
                rows = self.sql.get_many(entity, keys)
            else:
                rows = [self._from_document(entity, d) for d in self.rethink.get_many(entity, keys)]
        return {
            row.key: self._served(store, entity, row)
            for row in rows
            if not row.deleted and row.client_id == client_id
        }

    # -- the one check of a stored row ----------------------------------------------------
    def _from_document(self, entity: Entity, doc: dict[str, Any]) -> Row:
        """A RethinkDB document as a row: the mapping checks types and limits."""
        try:
            return row_from_document(entity, doc)
        except MappingError as exc:
            raise _invalid("old", entity, exc) from None

    def _served(self, store: StoreName, entity: Entity, row: Row) -> Row:
        """``row`` if it may be served: tombstones as they are; a live row of the SQL store
        through the same mapping a document or an event takes (types, then limits)."""
        if store == "new" and not row.deleted:
            try:
                check_identity(entity, row.key, row.client_id)
                map_values(entity, _as_fields(entity, row), key=row.key)
            except MappingError as exc:
                raise _invalid(store, entity, exc) from None
        return row


def _as_fields(entity: Entity, row: Row) -> dict[str, Any]:
    """A row's values by source field, as :func:`map_values` reads an event's data."""
    return {c.field: row.values.get(c.name) for c in entity.columns}


def _invalid(store: StoreName, entity: Entity, exc: Exception) -> StoredValueInvalid:
    INVALID.labels(entity.name, store).inc()
    reason = f"a stored item cannot be served: {exc}"
    if len(reason) > _REASON_CHARS:
        reason = reason[: _REASON_CHARS - 3] + "..."
    log.warning("not serving a stored item: %s", reason)
    return StoredValueInvalid(store, reason)


@contextmanager
def _decoding(store: StoreName, entity: Entity, key: str | None = None) -> Iterator[None]:
    """A store read whose answer cannot even be decoded (nested past the parser's
    recursion limit: the SQL store names the key and column; RethinkDB's driver fails
    before any key is known) is an invalid stored item too."""
    try:
        yield
    except MappingError as exc:
        raise _invalid(store, entity, exc) from None
    except RecursionError:
        where = f"{entity.name} {key!r:.200}" if key is not None else f"an {entity.name} item"
        raise _invalid(store, entity, ValueError(f"{where} nests too deep to decode")) from None


def _cut(rows: list[Row], limit: int) -> Page:
    if len(rows) > limit:
        return Page(rows[:limit], rows[limit - 1].key)
    return Page(rows, None)
