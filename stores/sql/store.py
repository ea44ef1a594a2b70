"""The new store: entity tables in SQL Server (or a stand-in) through pyodbc.

There is one write path, :meth:`SqlStore.apply`, used by the subscription handler,
the backfill and failure replays alike: a batch of rows, deduplicated, written with a
version-guarded upsert in one transaction. A row changes only when the incoming
``(version, deleted)`` is greater than the stored one, so duplicates, reordering and
a backfill racing the double-write all end in the newest version.
"""

from __future__ import annotations

import math
import queue
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cached_property
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import pyodbc

from core.clock import now_utc
from core.config import Config, Entity
from core.redaction import redact

from .. import jsontext
from ..mapping import MappingError, Row
from ..writes import WriteResult, newest
from ._cursors import StatementCursors
from .dialects import Dialect, get_dialect
from .schema import (
    DELETED,
    UPDATED_AT,
    Table,
    ensure_tables,
    entity_table,
    entity_value_columns,
)

if TYPE_CHECKING:
    from core.settings import Settings


#: A values list's key, and its rank (version, deleted), for :func:`newest`.
_KEY = itemgetter(0)
_RANK = itemgetter(2, 3)


class StoreUnavailable(RuntimeError):
    """The SQL store cannot be reached or failed transiently; retry later, nothing lost."""

    #: Whether waiting and trying again may succeed.
    retryable = True


class StoreAuthFailed(StoreUnavailable):
    """The SQL server refused the login (user, password or database access): retrying
    cannot help, so it is reported at once. The message holds no part of the DSN."""

    retryable = False


#: SQLSTATEs of a refused login: invalid authorization (SQL Server's "Login failed"),
#: PostgreSQL's invalid password.
_AUTH_STATES = ("28000", "28P01")
#: psqlodbc reports PostgreSQL's login refusals as 08001 ("connection failed"): these
#: server messages tell them apart from a server that cannot be reached.
_AUTH_MESSAGES = re.compile(
    r"password authentication failed|authentication failed for user|role \"[^\"]*\" does "
    r"not exist|no pg_hba\.conf entry|login failed for user|cannot open database",
    re.IGNORECASE,
)


def is_auth_failure(exc: BaseException) -> bool:
    """Whether a driver error is the server refusing the login (not a network problem)."""
    if not isinstance(exc, pyodbc.Error) or not exc.args:
        return False
    state = str(exc.args[0])
    return state.startswith(_AUTH_STATES) or bool(
        _AUTH_MESSAGES.search(" ".join(str(a) for a in exc.args[1:]))
    )


#: SQLSTATE classes that mean "try again": connection trouble, timeouts (57014: a
#: statement cancelled, as PostgreSQL's statement_timeout does), deadlocks.
_TRANSIENT_STATES = ("08", "HYT00", "HYT01", "40001", "40P01", "57014", "57P01", "57P03")
#: HY000 is "general error": SQLite's driver reports everything so, and psqlodbc a lost
#: connection. Only these words make one transient (retry), not "no such table".
_TRANSIENT_WORDS = (
    "locked",
    "busy",
    "connection",
    "server closed",
    "could not send",
    "could not receive",
    "timeout",
    "timed out",
    "deadlock",
    "terminating",
)


def is_transient(exc: BaseException) -> bool:
    """Whether retrying later may succeed (as opposed to a bug, bad data or a refused login)."""
    if is_auth_failure(exc):
        return False
    if isinstance(exc, pyodbc.OperationalError | pyodbc.InterfaceError):
        return True
    if not isinstance(exc, pyodbc.Error) or not exc.args:
        return False
    state = str(exc.args[0])
    if state.startswith(_TRANSIENT_STATES):
        return True
    message = " ".join(str(a) for a in exc.args[1:]).lower()
    return state == "HY000" and any(word in message for word in _TRANSIENT_WORDS)


@dataclass(frozen=True)
class PreparedRows:
    """Rows of one entity ready for the upsert: newest per key, in key order, as JSON."""

    entity: str
    chunks: tuple[str, ...]  # one upsert statement's batch parameter each
    received: int  # rows given, duplicates included (those count as stale)
    written_at: Any  # the write time, bound as it is (``_updated_at`` of every row)
    key_range: tuple[str, str] | None = None  # the lowest and highest key, if any rows


@dataclass(frozen=True)
class RowEncoder:
    """Turns rows into the upsert's JSON parameters; needs no connection.

    Folding, sorting and serialising a batch is CPU work. Kept apart from the
    connection, it can run in another thread or process (the backfill prepares its
    next batch in a child process while the current one commits) and its result is
    handed to :meth:`SqlStore.apply`.
    """

    dialect: Dialect
    entity: Entity
    table: Table

    def prepare(self, rows: Sequence[Row]) -> PreparedRows:
        """Newest row per key, in key order, as JSON chunks, to be stamped written now."""
        names = self._layout[0]
        return self.prepare_values(
            [[r.key, r.client_id, r.version, r.deleted, *map(r.values.get, names)] for r in rows]
        )

    def prepare_values(self, rows: Sequence[list[Any]]) -> PreparedRows:
        """:meth:`prepare` of rows given as lists: key, client id, version, deleted, then
        the mapped values of the entity's columns, in that order (the backfill's export
        reader decodes whole batches straight into such lists). The lists are reused."""
        # Key order: every writer locks rows in the same order, so a backfill batch and
        # a subscription batch touching the same keys cannot deadlock each other.
        unique = sorted(newest(rows, key=_KEY, rank=_RANK), key=_KEY)
        converted = self._layout[1]
        for values in unique:
            for at, convert in converted:
                value = values[at]
                if value is not None:
                    values[at] = convert(value)
        step = self.dialect.max_rows
        chunks = tuple(
            jsontext.dumps_with_times(unique[start : start + step])
            for start in range(0, len(unique), step)
        )
        written_at = self.dialect.to_db("datetime", now_utc())
        key_range = (unique[0][0], unique[-1][0]) if unique else None
        return PreparedRows(self.entity.name, chunks, len(rows), written_at, key_range)

    @cached_property
    def _layout(self) -> tuple[tuple[str, ...], tuple[tuple[int, Callable[[Any], Any]], ...]]:
        """The mapped columns in table order, and (position, conversion) where one applies.

        :meth:`prepare_values` writes four of the columns every entity table starts
        with first (``_updated_at`` is a parameter of its own); this checks the table really
        does start with them, rather than trusting it.
        """
        e = self.entity
        fixed = (e.key, e.client, e.version, DELETED)
        if self.table.columns[len(fixed)].name != UPDATED_AT:
            raise ValueError(f"table {self.table.name!r}: {UPDATED_AT} is not its 5th column")
        if tuple(c.name for c in self.table.columns[: len(fixed)]) != fixed:
            raise ValueError(f"table {self.table.name!r} does not start with {fixed}")
        columns = entity_value_columns(e, self.table)
        if tuple(c.name for c in columns) != tuple(c.name for c in e.columns):
            raise ValueError(f"table {self.table.name!r}: columns not in the entity's order")
        converted = []
        for at, column in enumerate(columns, start=len(fixed)):  # after the fixed four
            convert = self.dialect.json_converter(column.kind)
            if convert is not None:
                converted.append((at, convert))
        return tuple(c.name for c in columns), tuple(converted)


class SqlStore:
    """Entity tables plus the project's bookkeeping tables in one SQL database."""

    def __init__(
        self,
        connection_string: str,
        dialect: Dialect | str,
        config: Config,
        *,
        login_timeout_s: float = 10,
        query_timeout_s: float = 60,
        pool_size: int = 4,
        server_timeout: bool = False,
    ) -> None:
        """``query_timeout_s`` is the driver's query timeout (SQL Server, SQLite);
        ``server_timeout`` also sets it as the server's statement timeout on each new
        connection where the driver has none (PostgreSQL's ``statement_timeout``), for
        callers that must bound every statement (the read API)."""
        self.dialect = get_dialect(dialect) if isinstance(dialect, str) else dialect
        self._dsn = self.dialect.prepare_dsn(connection_string)
        self.config = config
        self._login_timeout = max(1, math.ceil(login_timeout_s))
        self._query_timeout = max(1, math.ceil(query_timeout_s))
        self._server_timeout_ms = (
            round(query_timeout_s * 1000)
            if server_timeout and self.dialect.name == "postgresql"
            else None
        )
        # Connections with their cursors: reusing them keeps each statement prepared.
        self._pool: queue.LifoQueue[StatementCursors] = queue.LifoQueue(maxsize=pool_size)
        self._lock = threading.Lock()
        self._tables = {name: entity_table(e) for name, e in config.entities.items()}

    @classmethod
    def from_settings(cls, settings: Settings, config: Config, **kwargs: Any) -> SqlStore:
        return cls(settings.sql_connection_string(), settings.dialect, config, **kwargs)

    def __repr__(self) -> str:  # never show the DSN: it may hold a password
        return f"SqlStore(dialect={self.dialect.name!r})"

    # -- connections ------------------------------------------------------------------
    def _connect(self) -> pyodbc.Connection:
        # SQLite: autocommit at the driver, transactions begun explicitly (see below).
        manual = self.dialect.name == "sqlite"
        try:
            conn = pyodbc.connect(self._dsn, autocommit=manual, timeout=self._login_timeout)
        except pyodbc.Error as exc:
            if is_auth_failure(exc):
                raise StoreAuthFailed(
                    f"authentication failed for the SQL store ({self.dialect.name}): the "
                    f"server refused the login (SQLSTATE {exc.args[0]}); check the user, "
                    "password and database of CUTOVER_SQL_DSN"
                ) from None
            raise StoreUnavailable(f"cannot connect to the SQL store: {redact(str(exc))}") from None
        # psqlodbc has no query timeout attribute; the server's own applies there.
        with suppress(pyodbc.Error):
            conn.timeout = self._query_timeout
        if self._server_timeout_ms is not None:
            try:
                conn.execute(f"SET statement_timeout = {self._server_timeout_ms}")
                conn.commit()
            except pyodbc.Error as exc:
                _close_quietly(conn)
                raise StoreUnavailable(f"SQL store error: {redact(str(exc))}") from None
        return conn

    @contextmanager
    def transaction(self) -> Iterator[StatementCursors]:
        """A cursor in a transaction: committed on success, rolled back on error.

        Transient database errors surface as :class:`StoreUnavailable` so callers can
        retry; the broken connection is discarded rather than returned to the pool.

        On SQLite the transaction starts with ``BEGIN IMMEDIATE``: the write lock is
        taken up front, so two processes that read then write queue up instead of
        deadlocking on the lock upgrade (which SQLite resolves only by timing out).
        """
        try:
            cursor = self._pool.get_nowait()
        except queue.Empty:
            cursor = StatementCursors(self._connect())
        conn = cursor.connection
        healthy = True
        explicit = self.dialect.name == "sqlite"
        try:
            if explicit:
                cursor.execute("BEGIN IMMEDIATE")
            yield cursor
            if explicit:
                cursor.execute("COMMIT")
            else:
                conn.commit()
        except pyodbc.Error as exc:
            healthy = False
            _close_quietly(conn, rollback=True)
            if is_transient(exc):
                raise StoreUnavailable(f"SQL store error: {redact(str(exc))}") from None
            raise
        except BaseException:
            try:
                if explicit:
                    cursor.execute("ROLLBACK")
                else:
                    conn.rollback()
            except pyodbc.Error:
                healthy = False
                _close_quietly(conn)
            raise
        finally:
            if healthy:
                try:
                    self._pool.put_nowait(cursor)
                except queue.Full:
                    _close_quietly(conn)

    def close(self) -> None:
        while True:
            try:
                _close_quietly(self._pool.get_nowait().connection)
            except queue.Empty:
                return

    def ping(self) -> None:
        with self.transaction() as cur:
            cur.execute("SELECT 1").fetchone()

    # -- schema -----------------------------------------------------------------------
    def ensure_schema(self, extra: Iterable[Table] = ()) -> list[str]:
        """Create or upgrade the entity tables (and ``extra`` bookkeeping tables)."""
        with self._lock, self.transaction() as cur:
            return ensure_tables(cur, self.dialect, [*self._tables.values(), *extra])

    def table(self, entity: Entity | str) -> Table:
        name = entity if isinstance(entity, str) else entity.name
        try:
            return self._tables[name]
        except KeyError:
            self.config.entity(name)  # raises ConfigError naming the known entities
            raise

    # -- the write path -----------------------------------------------------------------
    def encoder(self, entity: Entity) -> RowEncoder:
        """The entity's write preparation, detached from any connection."""
        return RowEncoder(self.dialect, entity, self.table(entity))

    def prepare(self, entity: Entity, rows: Sequence[Row]) -> PreparedRows:
        """See :meth:`RowEncoder.prepare`."""
        return self.encoder(entity).prepare(rows)

    def apply(
        self,
        entity: Entity,
        rows: Sequence[Row] | PreparedRows,
        *,
        cursor: StatementCursors | None = None,
    ) -> WriteResult:
        """Write rows with the version rules; in ``cursor``'s transaction when given."""
        prepared = rows if isinstance(rows, PreparedRows) else self.prepare(entity, rows)
        if prepared.entity != entity.name:
            raise ValueError(f"rows prepared for {prepared.entity!r}, not {entity.name!r}")
        if cursor is not None:
            return self._apply(cursor, entity, prepared)
        with self.transaction() as cur:
            return self._apply(cur, entity, prepared)

    def _apply(self, cur: StatementCursors, entity: Entity, prepared: PreparedRows) -> WriteResult:
        if not prepared.chunks:
            return WriteResult(0, prepared.received)
        table = self.table(entity)
        columns = [(c.name, c.kind) for c in table.columns]
        sql = self.dialect.upsert(
            table.name,
            columns,
            key=entity.key,
            version=entity.version,
            deleted=DELETED,
            stamp=UPDATED_AT,
        )
        applied = 0
        for chunk in prepared.chunks:
            cur.execute(sql, prepared.written_at, chunk)
            applied += max(cur.rowcount, 0)
        return WriteResult(applied, prepared.received - applied)

    # -- reads ------------------------------------------------------------------------
    def _select(self, entity: Entity) -> str:
        table = self.table(entity)
        cols = ", ".join(self.dialect.quote(c.name) for c in table.columns)
        return f"SELECT {cols} FROM {self.dialect.quote(table.name)}"

    def _row(self, entity: Entity, record: Sequence[Any]) -> Row:
        """A stored record as a Row; a value that cannot be decoded (a JSON text nested
        past the parser's recursion limit, say) is a MappingError naming key and column."""
        table = self.table(entity)
        from_db = self.dialect.from_db
        try:
            values = {
                c.name: from_db(c.kind, v) for c, v in zip(table.columns, record, strict=True)
            }
        except (ValueError, TypeError, RecursionError):
            raise self._undecodable(entity, table, record) from None
        return Row(
            key=values.pop(entity.key),
            client_id=values.pop(entity.client),
            version=values.pop(entity.version),
            deleted=values.pop(DELETED),
            values={c.name: values[c.name] for c in entity.columns},
        )

    def _undecodable(self, entity: Entity, table: Table, record: Sequence[Any]) -> MappingError:
        """The error for a record one of whose values does not decode, naming the first."""
        key = record[[c.name for c in table.columns].index(entity.key)]
        for column, value in zip(table.columns, record, strict=True):
            try:
                self.dialect.from_db(column.kind, value)
            except (ValueError, TypeError, RecursionError) as exc:
                reason = "nests too deep to decode" if isinstance(exc, RecursionError) else exc
                return MappingError(
                    f"{entity.name} {key!r:.200}: stored column {column.name!r} {reason}"
                )
        return MappingError(f"{entity.name} {key!r:.200}: a stored value does not decode")

    def get(self, entity: Entity, key: str) -> Row | None:
        """One row by key, tombstones included (callers decide what a tombstone means)."""
        rows = self.get_many(entity, [key])
        return rows[0] if rows else None

    def get_many(self, entity: Entity, keys: Sequence[str]) -> list[Row]:
        q = self.dialect.quote
        found: list[Row] = []
        step = min(self.dialect.max_params, 1000)
        with self.transaction() as cur:
            for start in range(0, len(keys), step):
                chunk = list(keys[start : start + step])
                marks = ", ".join("?" for _ in chunk)
                cur.execute(f"{self._select(entity)} WHERE {q(entity.key)} IN ({marks})", chunk)
                found.extend(self._row(entity, r) for r in cur.fetchall())
        return found

    def page(
        self,
        entity: Entity,
        client_id: str | None,
        *,
        after: str | None = None,
        limit: int = 1000,
        include_deleted: bool = False,
    ) -> list[Row]:
        """Rows in key order after ``after`` (keyset paging), one client or all."""
        sql, params = self.page_sql(
            entity, client_id, after=after, limit=limit, include_deleted=include_deleted
        )
        with self.transaction() as cur:
            cur.execute(sql, params)
            return [self._row(entity, r) for r in cur.fetchall()]

    def page_sql(
        self,
        entity: Entity,
        client_id: str | None,
        *,
        after: str | None = None,
        limit: int = 1000,
        include_deleted: bool = False,
    ) -> tuple[str, list[Any]]:
        """The statement behind :meth:`page` (also checked offline as T-SQL)."""
        where, params = self._where(entity, client_id, after, include_deleted)
        order = f" ORDER BY {self.dialect.quote(entity.key)}"
        return self.dialect.limit(self._select(entity) + where + order, limit), params

    def _where(
        self, entity: Entity, client_id: str | None, after: str | None, include_deleted: bool
    ) -> tuple[str, list[Any]]:
        """A WHERE clause (or "") for one client, keys after a key, tombstones or not."""
        q = self.dialect.quote
        where, params = [], []
        if client_id is not None:
            where.append(f"{q(entity.client)} = ?")
            params.append(client_id)
        if after is not None:
            where.append(f"{q(entity.key)} > ?")
            params.append(after)
        if not include_deleted:
            where.append(f"{q(DELETED)} = ?")
            params.append(self.dialect.to_db("bool", False))
        return (" WHERE " + " AND ".join(where) if where else ""), params

    def scan(
        self,
        entity: Entity,
        client_id: str | None,
        *,
        page_size: int = 1000,
        include_deleted: bool = True,
    ) -> Iterator[Row]:
        """Every row in key order, paged, so memory stays flat on any table size."""
        after: str | None = None
        while True:
            rows = self.page(
                entity, client_id, after=after, limit=page_size, include_deleted=include_deleted
            )
            yield from rows
            if len(rows) < page_size:
                return
            after = rows[-1].key

    def count(
        self, entity: Entity, client_id: str | None = None, *, include_deleted: bool = False
    ) -> int:
        where, params = self._where(entity, client_id, None, include_deleted)
        sql = f"SELECT COUNT(*) FROM {self.dialect.quote(self.table(entity).name)}{where}"
        with self.transaction() as cur:
            return int(cur.execute(sql, params).fetchone()[0])

    def clients(self, entity: Entity) -> list[str]:
        q = self.dialect.quote
        with self.transaction() as cur:
            cur.execute(
                f"SELECT DISTINCT {q(entity.client)} FROM {q(self.table(entity).name)} "
                f"ORDER BY {q(entity.client)}"
            )
            return [r[0] for r in cur.fetchall()]


def _close_quietly(conn: pyodbc.Connection, *, rollback: bool = False) -> None:
    if rollback:
        with suppress(pyodbc.Error):
            conn.rollback()  # a no-op on an autocommit (SQLite) connection: close ends it
    with suppress(pyodbc.Error):
        conn.close()
