"""Where a subscription's handler writes: the new SQL store or the legacy RethinkDB.

Both sinks take :class:`~stores.mapping.Row` values mapped by
:func:`~stores.mapping.row_from_event` and delegate to the store's one version-guarded
write path, so the version rules are never re-implemented here.

The SQL sink writes inside the batch's bookkeeping transaction (``cursor``): rows,
failure-log entries and counters commit together or not at all. The RethinkDB sink
cannot share a SQL transaction; its write is idempotent (newest version wins), so a
crash between the RethinkDB write and the bookkeeping commit only means the batch is
redelivered and re-applied as stale.

Each sink also says which failures are its store's (:meth:`Sink.store_failure`): the
connection, a timeout, a deadlock, authentication, the server shutting down, a missing
table or another schema problem. Those are positively listed; the handler retries them
later. Every other failure of a write is taken to be caused by what was written, and
the handler isolates the message responsible.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, Protocol

import pyodbc
from rethinkdb import errors as reql

from core.config import Entity, Subscription
from core.redaction import redact
from stores.mapping import Row
from stores.rethink import RethinkStore, RethinkUnavailable
from stores.runtime import Runtime
from stores.sql import SqlStore, StatementCursors, StoreUnavailable, WriteResult, is_transient

#: SQLSTATE classes of a store problem, not of a value: connection (08), authorization
#: (28), invalid transaction state (25), missing catalog or schema (3D, 3F), transaction
#: rollback such as deadlock or serialization (40), syntax or access rule such as a
#: missing table or column (42), insufficient resources (53), object not in prerequisite
#: state (55), operator intervention such as shutdown or a cancelled query (57), system
#: and internal errors (58, XX), the driver manager (IM), timeouts and cancellation (HYT,
#: HY008), memory (HY001).
_STORE_STATES = (
    "08",
    "25",
    "28",
    "3D",
    "3F",
    "40",
    "42",
    "53",
    "55",
    "57",
    "58",
    "XX",
    "IM",
    "HYT",
    "HY001",
    "HY008",
)
#: SQLite's driver reports everything as HY000: these words mark a store problem there.
_STORE_WORDS = re.compile(
    r"no such (table|column)|readonly|read-only|disk|unable to open|not authorized"
    r"|out of memory|interrupted|schema",
    re.IGNORECASE,
)
#: reqlite raises the base ReqlRuntimeError for a missing database or table.
_MISSING_TABLE = re.compile(r"\b(Database|Table) `[^`]*` does not exist")


def sql_store_failure(exc: BaseException) -> bool:
    """Whether a failure of the SQL store's statements is the store's, not a value's."""
    if isinstance(exc, StoreUnavailable | ConnectionError | TimeoutError) or is_transient(exc):
        return True
    if not isinstance(exc, pyodbc.Error) or not exc.args:
        return False
    state = str(exc.args[0])
    if state.startswith(_STORE_STATES):
        return True
    message = " ".join(str(a) for a in exc.args[1:])
    return state == "HY000" and _STORE_WORDS.search(message) is not None


def rethink_store_failure(exc: BaseException) -> bool:
    """Whether a failure of a RethinkDB query is the store's, not a value's.

    A driver compile error (a value nested too deep), a query logic error (a value of
    the wrong kind) or a non-existence error for a field are a value's; the connection,
    authentication, a timeout, availability, permissions and a missing table are not.
    """
    if isinstance(exc, RethinkUnavailable | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, reql.ReqlDriverError | reql.ReqlAvailabilityError):
        return True  # the connection, authentication or a timeout; a missing table
    if isinstance(exc, reql.ReqlPermissionError):
        return True
    return type(exc) is reql.ReqlRuntimeError and _MISSING_TABLE.search(str(exc)) is not None


class Sink(Protocol):
    kind: Literal["sqlstore", "rethinkdb"]
    #: How error messages name the store the rows go to.
    label: str

    def prepare(self, entity: Entity) -> None:
        """Create the target table if missing (idempotent, called at worker start)."""

    def write(self, entity: Entity, rows: Sequence[Row], cursor: StatementCursors) -> WriteResult:
        """Apply rows with the version rules; ``cursor`` is the batch's SQL transaction."""

    def store_failure(self, exc: BaseException) -> bool:
        """Whether ``exc``, raised by a batch's transaction, is a failure of a store
        (this sink's, or the SQL store that holds the bookkeeping) rather than of a value."""

    def probe(self, entity: Entity) -> None:
        """A trivial read of the target table; raises when the store is not working."""


class SqlSink:
    kind: Literal["sqlstore", "rethinkdb"] = "sqlstore"
    label = "the SQL store"

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def prepare(self, entity: Entity) -> None:
        """Entity tables are created with the bookkeeping tables by ``ensure_schema``."""

    def write(self, entity: Entity, rows: Sequence[Row], cursor: StatementCursors) -> WriteResult:
        return self.store.apply(entity, rows, cursor=cursor)

    def store_failure(self, exc: BaseException) -> bool:
        return sql_store_failure(exc)

    def probe(self, entity: Entity) -> None:
        self.store.get(entity, _PROBE_KEY)


class RethinkSink:
    kind: Literal["sqlstore", "rethinkdb"] = "rethinkdb"
    label = "RethinkDB"

    def __init__(self, store: RethinkStore) -> None:
        self.store = store

    def prepare(self, entity: Entity) -> None:
        self.store.ensure_tables([entity])

    def write(self, entity: Entity, rows: Sequence[Row], cursor: StatementCursors) -> WriteResult:
        return self.store.write(entity, rows)

    def store_failure(self, exc: BaseException) -> bool:
        return rethink_store_failure(exc) or sql_store_failure(exc)

    def probe(self, entity: Entity) -> None:
        self.store.get(entity, _PROBE_KEY)


#: The key the probe reads: one primary-key lookup, whether a row has it or not.
_PROBE_KEY = "cutover-probe"


def blame(sink: Sink, entity: Entity, exc: BaseException) -> str:
    """Why a message is poison when writing its row, alone, failed with ``exc``.

    Re-raises ``exc`` when it is a failure of a store. Any other failure is the row's
    only if the store answers a trivial read of the same table right after
    (:meth:`Sink.probe`): when that read fails too, its failure propagates, so an
    unforeseen kind of store trouble is retried rather than blamed on a message.
    """
    if sink.store_failure(exc):
        raise exc
    sink.probe(entity)
    text = str(exc)[:_MAX_QUOTED]  # a driver may quote the whole query: megabytes
    return f"{sink.label} rejected the row: {type(exc).__name__}: {redact(text)}"


#: How much of an exception's text a reason quotes (the failure log keeps less).
_MAX_QUOTED = 10_000


def sink_for(runtime: Runtime, subscription: Subscription) -> Sink:
    if subscription.sink == "sqlstore":
        return SqlSink(runtime.sql)
    return RethinkSink(runtime.rethink)
