"""One read model over both stores: same response, same cursor, whichever store serves.

A page is the client's live items (tombstones excluded) in key order after a cursor;
the cursor is opaque to callers but is just the last key served, so a caller moved from
one store to the other mid-listing continues exactly where it was. Both paths ask for
``limit + 1`` live items to know whether another page exists, so ``next_cursor`` is
None exactly when the listing is complete, in both stores.

Values are presented the way both stores can hold them: datetimes in UTC to the
millisecond (RethinkDB keeps no finer), integral numbers inside JSON as integers
(RethinkDB has only doubles), so a client sees the same bytes before and after cutover.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from prometheus_client import Counter

from cutover.config import ColumnType, Entity
from cutover.runtime import Runtime
from stores.mapping import MappingError, Row, parse_datetime, row_from_document

log = logging.getLogger(__name__)

StoreName = Literal["old", "new"]

UNMAPPABLE = Counter(
    "cutover_read_unmappable_documents_total",
    "RethinkDB documents skipped in a listing because they do not map to the entity",
    ["entity"],
)


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
    #: Documents skipped because they do not map (old store only).
    skipped: int = 0


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
    """Pages and items of one client from either store, as :class:`Row`."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def page(
        self, store: StoreName, entity: Entity, client_id: str, after: str | None, limit: int
    ) -> Page:
        if store == "new":
            rows = self.runtime.sql.page(entity, client_id, after=after, limit=limit + 1)
            return _cut(rows, limit)
        return self._old_page(entity, client_id, after, limit)

    def _old_page(self, entity: Entity, client_id: str, after: str | None, limit: int) -> Page:
        """Live documents after ``after``: RethinkDB pages include tombstones, so read on
        until ``limit + 1`` live ones are found or the client's range ends."""
        live: list[Row] = []
        skipped = 0
        position = after
        batch = limit + 1
        while len(live) <= limit:
            docs = self.runtime.rethink.page(entity, client_id, after=position, limit=batch)
            for doc in docs:
                try:
                    row = row_from_document(entity, doc)
                except MappingError as exc:
                    skipped += 1
                    UNMAPPABLE.labels(entity.name).inc()
                    log.warning("skipping an unmappable document: %s", exc)
                    continue
                if not row.deleted:
                    live.append(row)
            if len(docs) < batch:
                break
            position = docs[-1][entity.key]
        page = _cut(live, limit)
        return Page(page.rows, page.next_after, skipped)

    def item(self, store: StoreName, entity: Entity, client_id: str, key: str) -> Row | None:
        """One live item of this client; None if absent, deleted or another client's.

        A document that does not map raises MappingError (the caller answers 502).
        """
        if store == "new":
            row = self.runtime.sql.get(entity, key)
        else:
            doc = self.runtime.rethink.get(entity, key)
            row = row_from_document(entity, doc) if doc is not None else None
        if row is None or row.deleted or row.client_id != client_id:
            return None
        return row

    def rows_for(
        self, store: StoreName, entity: Entity, client_id: str, keys: list[str]
    ) -> dict[str, Row]:
        """Live rows of these keys for this client, by key (for re-checks)."""
        found: dict[str, Row] = {}
        if store == "new":
            rows = self.runtime.sql.get_many(entity, keys)
        else:
            rows = []
            for doc in self.runtime.rethink.get_many(entity, keys):
                try:
                    rows.append(row_from_document(entity, doc))
                except MappingError:
                    UNMAPPABLE.labels(entity.name).inc()
        for row in rows:
            if not row.deleted and row.client_id == client_id:
                found[row.key] = row
        return found


def _cut(rows: list[Row], limit: int) -> Page:
    if len(rows) > limit:
        return Page(rows[:limit], rows[limit - 1].key)
    return Page(rows, None)
