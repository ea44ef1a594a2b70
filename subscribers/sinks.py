"""Where a subscription's handler writes: the new SQL store or the legacy RethinkDB.

Both sinks take :class:`~stores.mapping.Row` values mapped by
:func:`~stores.mapping.row_from_event` and delegate to the store's one version-guarded
write path, so the version rules are never re-implemented here.

The SQL sink writes inside the batch's bookkeeping transaction (``cursor``): rows,
failure-log entries and counters commit together or not at all. The RethinkDB sink
cannot share a SQL transaction; its write is idempotent (newest version wins), so a
crash between the RethinkDB write and the bookkeeping commit only means the batch is
redelivered and re-applied as stale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from cutover.config import Entity, Subscription
from cutover.runtime import Runtime
from stores.mapping import Row
from stores.rethink import RethinkStore
from stores.sql import SqlStore, StatementCursors, WriteResult


class Sink(Protocol):
    kind: Literal["sqlstore", "rethinkdb"]

    def prepare(self, entity: Entity) -> None:
        """Create the target table if missing (idempotent, called at worker start)."""

    def write(self, entity: Entity, rows: Sequence[Row], cursor: StatementCursors) -> WriteResult:
        """Apply rows with the version rules; ``cursor`` is the batch's SQL transaction."""


class SqlSink:
    kind: Literal["sqlstore", "rethinkdb"] = "sqlstore"

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def prepare(self, entity: Entity) -> None:
        """Entity tables are created with the bookkeeping tables by ``ensure_schema``."""

    def write(self, entity: Entity, rows: Sequence[Row], cursor: StatementCursors) -> WriteResult:
        return self.store.apply(entity, rows, cursor=cursor)


class RethinkSink:
    kind: Literal["sqlstore", "rethinkdb"] = "rethinkdb"

    def __init__(self, store: RethinkStore) -> None:
        self.store = store

    def prepare(self, entity: Entity) -> None:
        self.store.ensure_tables([entity])

    def write(self, entity: Entity, rows: Sequence[Row], cursor: StatementCursors) -> WriteResult:
        return self.store.write(entity, rows)


def sink_for(runtime: Runtime, subscription: Subscription) -> Sink:
    if subscription.sink == "sqlstore":
        return SqlSink(runtime.sql)
    return RethinkSink(runtime.rethink)
