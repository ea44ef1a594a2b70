"""The old store: RethinkDB through the official driver.

Reads page by key (keyset paging with ``between(... left_bound='open')``), never
with ``skip``, so a scan costs the same at the millionth document as at the first,
and a resumed backfill starts exactly after its checkpoint. Writes (the legacy
subscription's sink and seeding) follow the same version rules as the SQL store.

Works against RethinkDB and against reqlite (the local stand-in); where reqlite
differs (``conn.close`` must not wait for noreply, no conflict functions, ``replace``
on a missing document does not insert), the code takes the path both accept.
"""

from __future__ import annotations

import os
import queue
import socket
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from rethinkdb import RethinkDB
from rethinkdb.errors import (
    ReqlAuthError,
    ReqlDriverError,
    ReqlError,
    ReqlOpFailedError,
    ReqlTimeoutError,
)

from core.config import Config, Entity

from .mapping import Row, document_from_row
from .writes import WriteResult, newest

if TYPE_CHECKING:
    from core.settings import Settings

r = RethinkDB()


class RethinkUnavailable(RuntimeError):
    """RethinkDB cannot be reached; retry later, nothing lost."""

    #: Whether waiting and trying again may succeed.
    retryable = True


class RethinkAuthFailed(RethinkUnavailable):
    """RethinkDB refused the user or password: retrying cannot help, so report it now."""

    retryable = False


class RethinkStore:
    """Entity tables in RethinkDB, one connection per operation block."""

    def __init__(
        self,
        config: Config,
        *,
        host: str = "127.0.0.1",
        port: int = 28015,
        user: str = "admin",
        password: str = "",
        timeout_s: float = 10.0,
        pool_size: int = 8,
        query_timeout_s: float | None = None,
    ) -> None:
        self.config = config
        self._pool_size = pool_size
        self._query_timeout = query_timeout_s
        self._pool: queue.LifoQueue[Any] = queue.LifoQueue(pool_size)
        self._pool_pid = os.getpid()
        self._params: dict[str, Any] = {
            "host": host,
            "port": port,
            "user": user,
            "password": password,
            "timeout": timeout_s,
        }

    @classmethod
    def from_settings(cls, settings: Settings, config: Config, **kwargs: Any) -> RethinkStore:
        """The store the settings name; ``kwargs`` override the connection options
        (the read API passes its own timeouts and pool size)."""
        options: dict[str, Any] = {"timeout_s": settings.rethinkdb_timeout_s, **kwargs}
        return cls(
            config,
            host=settings.rethinkdb_host,
            port=settings.rethinkdb_port,
            user=settings.rethinkdb_user,
            password=settings.rethinkdb_password.get_secret_value(),
            **options,
        )

    def __repr__(self) -> str:
        return f"{self._params['host']}:{self._params['port']}"

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without its connections: another process opens its own."""
        return {
            "config": self.config,
            "pool_size": self._pool_size,
            "params": self._params,
            "query_timeout": self._query_timeout,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.config, self._params = state["config"], state["params"]
        self._pool_size = state["pool_size"]
        self._query_timeout = state.get("query_timeout")
        self._pool = queue.LifoQueue(self._pool_size)
        self._pool_pid = os.getpid()

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """A pooled connection, used by one caller at a time.

        The handshake costs milliseconds per connection, most of a single-document read,
        so connections are kept (up to ``pool_size``) and reused. A connection that
        failed is closed, never returned; a forked child starts with an empty pool, as
        sharing the parent's sockets would interleave their replies.
        """
        if self._pool_pid != os.getpid():
            self._pool, self._pool_pid = queue.LifoQueue(self._pool_size), os.getpid()
        conn = None
        with suppress(queue.Empty):
            conn = self._pool.get_nowait()
        if conn is None or not conn.is_open():
            conn = self._connect()
        healthy = False
        try:
            yield conn
            healthy = True
        except ReqlTimeoutError:
            raise RethinkUnavailable(
                f"RethinkDB at {self} did not answer within {self._query_timeout} s"
            ) from None
        except ReqlDriverError as exc:
            raise RethinkUnavailable(f"RethinkDB connection failed: {exc}") from None
        except ReqlError:
            healthy = True  # a query error (missing table, bad value): the link is fine
            raise
        finally:
            if healthy:
                try:
                    self._pool.put_nowait(conn)
                except queue.Full:
                    _close(conn)
            else:
                _close(conn)

    def _connect(self) -> Any:
        """A new connection, with the query deadline on its socket when one is set.

        The driver's ``timeout`` bounds connecting and the handshake only: a query on a
        server that stopped answering would wait forever. ``SO_RCVTIMEO`` and
        ``SO_SNDTIMEO`` make each receive and send give up after the deadline; the
        driver then raises ``ReqlTimeoutError`` and the connection is discarded (its
        reply may still arrive). An authentication refusal is :class:`RethinkAuthFailed`.
        """
        try:
            conn = r.connect(**self._params)
        except ReqlAuthError:
            raise RethinkAuthFailed(
                f"authentication failed for RethinkDB at {self}: the server refused the "
                "user or password (CUTOVER_RETHINKDB_USER / _PASSWORD)"
            ) from None
        except ReqlDriverError as exc:
            raise RethinkUnavailable(f"cannot connect to RethinkDB at {self}: {exc}") from None
        if self._query_timeout is not None:
            _set_socket_deadline(conn, self._query_timeout)
        return conn

    def close(self) -> None:
        """Close the pooled connections (they are reopened on the next use)."""
        while True:
            try:
                _close(self._pool.get_nowait())
            except queue.Empty:
                return

    def table(self, entity: Entity) -> Any:
        return r.db(entity.rethinkdb_db).table(entity.rethinkdb_table)

    # -- schema -----------------------------------------------------------------------
    def ensure_tables(self, entities: Sequence[Entity] | None = None) -> list[str]:
        """Create missing databases, tables and the [client, key] index."""
        created: list[str] = []
        with self.connection() as conn:
            for entity in entities or list(self.config.entities.values()):
                if entity.rethinkdb_db not in r.db_list().run(conn):
                    _ignore_exists(lambda e=entity: r.db_create(e.rethinkdb_db).run(conn))
                    created.append(f"db {entity.rethinkdb_db}")
                db = r.db(entity.rethinkdb_db)
                if entity.rethinkdb_table not in db.table_list().run(conn):
                    _ignore_exists(
                        lambda e=entity, d=db: d.table_create(
                            e.rethinkdb_table, primary_key=e.key
                        ).run(conn)
                    )
                    created.append(f"table {entity.rethinkdb_db}.{entity.rethinkdb_table}")
                table = self.table(entity)
                if entity.client_index not in table.index_list().run(conn):
                    _ignore_exists(
                        lambda e=entity, t=table: t.index_create(
                            e.client_index, [r.row[e.client], r.row[e.key]]
                        ).run(conn)
                    )
                    created.append(f"index {entity.rethinkdb_table}.{entity.client_index}")
                table.index_wait().run(conn)
        return created

    # -- reads ------------------------------------------------------------------------
    def page(
        self, entity: Entity, client_id: str | None, *, after: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Documents in key order after ``after``: by primary key, or one client's by index."""
        table = self.table(entity)
        if client_id is None:
            lower = r.minval if after is None else after
            query = table.between(lower, r.maxval, left_bound="closed" if after is None else "open")
            query = query.order_by(index=entity.key)
        else:
            lower = [client_id, r.minval] if after is None else [client_id, after]
            query = table.between(
                lower,
                [client_id, r.maxval],
                index=entity.client_index,
                left_bound="closed" if after is None else "open",
            ).order_by(index=entity.client_index)
        with self.connection() as conn:
            return list(query.limit(int(limit)).run(conn))

    def scan(
        self,
        entity: Entity,
        client_id: str | None = None,
        *,
        after: str | None = None,
        page_size: int = 1000,
    ) -> Iterator[dict[str, Any]]:
        """Every document in key order, page by page; memory stays flat."""
        while True:
            docs = self.page(entity, client_id, after=after, limit=page_size)
            yield from docs
            if len(docs) < page_size:
                return
            after = docs[-1][entity.key]

    def get(self, entity: Entity, key: str) -> dict[str, Any] | None:
        with self.connection() as conn:
            doc = self.table(entity).get(key).run(conn)
        return dict(doc) if doc is not None else None

    def get_many(self, entity: Entity, keys: Sequence[str]) -> list[dict[str, Any]]:
        if not keys:
            return []
        with self.connection() as conn:
            return list(self.table(entity).get_all(*keys).run(conn))

    def count(self, entity: Entity, client_id: str | None = None) -> int:
        table = self.table(entity)
        with self.connection() as conn:
            if client_id is None:
                return int(table.count().run(conn))
            return int(
                table.between(
                    [client_id, r.minval], [client_id, r.maxval], index=entity.client_index
                )
                .count()
                .run(conn)
            )

    def count_per_client(self, entity: Entity) -> dict[str, int]:
        with self.connection() as conn:
            return dict(self.table(entity).group(entity.client).count().run(conn))

    # -- writes -----------------------------------------------------------------------
    def write(self, entity: Entity, rows: Sequence[Row]) -> WriteResult:
        """Version-guarded batch write: newer ``(version, deleted)`` wins, per document.

        Step 1 inserts documents whose key is absent (atomic per key); step 2 replaces
        the others with a server-side branch, so a concurrent writer cannot slip an
        older version in between a read and a write.
        """
        unique = newest(rows)
        if not unique:
            return WriteResult(0, len(rows))
        docs = [document_from_row(entity, row) for row in unique]
        table = self.table(entity)
        version, marker = entity.version, entity.deleted_marker

        def wins(new: Any, old: Any) -> Any:
            new_deleted = new[marker].default(False).eq(True)
            old_deleted = old[marker].default(False).eq(True)
            return new[version].gt(old[version]) | (
                new[version].eq(old[version]) & new_deleted & old_deleted.not_()
            )

        with self.connection() as conn:
            inserted = table.insert(docs, conflict="error").run(conn)
            replaced = (
                r.expr(docs)
                .for_each(
                    lambda d: table.get(d[entity.key]).replace(
                        lambda old: r.branch(old.eq(None), d, r.branch(wins(d, old), d, old))
                    )
                )
                .run(conn)
            )
        applied = int(inserted.get("inserted", 0)) + int(replaced.get("replaced", 0))
        return WriteResult(applied, len(rows) - applied)

    def insert_documents(self, entity: Entity, docs: Sequence[dict[str, Any]]) -> int:
        """Raw insert for seeding history (documents as the legacy app wrote them)."""
        with self.connection() as conn:
            result = self.table(entity).insert(list(docs), conflict="replace").run(conn)
        return int(result.get("inserted", 0)) + int(result.get("replaced", 0))

    def drop_tables(self, entities: Sequence[Entity] | None = None) -> None:
        with self.connection() as conn:
            for entity in entities or list(self.config.entities.values()):
                db = r.db(entity.rethinkdb_db)
                if entity.rethinkdb_table in db.table_list().run(conn):
                    db.table_drop(entity.rethinkdb_table).run(conn)


def _set_socket_deadline(conn: Any, seconds: float) -> None:
    """Bound every receive and send on the connection's socket to ``seconds``.

    The driver keeps its socket blocking (timeout None) between queries, so the kernel's
    ``SO_RCVTIMEO``/``SO_SNDTIMEO`` are what a blocked call honours: it fails with
    EAGAIN, which the driver reports as ``ReqlTimeoutError``. The socket is reached
    through the driver's private attributes (rethinkdb 2.4); without them no deadline
    is set and callers rely on their own wait (the read API abandons the call).
    """
    sock = getattr(getattr(getattr(conn, "_instance", None), "_socket", None), "_socket", None)
    if not isinstance(sock, socket.socket):
        return
    whole = int(seconds)
    value = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def _close(conn: Any) -> None:
    with suppress(ReqlError, OSError):
        conn.close(noreply_wait=False)  # reqlite fails when asked to wait for noreply


def _ignore_exists(create: Any) -> None:
    """Run a create that may race another process creating the same thing."""
    try:
        create()
    except ReqlOpFailedError:
        pass
    except ReqlError as exc:  # reqlite raises the base class for "already exists"
        if "already exists" not in str(exc):
            raise
