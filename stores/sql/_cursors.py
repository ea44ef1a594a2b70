"""A connection's statements, each kept prepared on a cursor of its own.

pyodbc keeps the last statement of a cursor prepared, and skips preparing it again
only when the next ``execute`` is given the very same string *object* (it compares
pointers, not text). Callers build their SQL per call, and a transaction alternates
statements (the backfill's upsert, ledger update, checkpoint and pause check, batch
after batch), so every statement used to be prepared on every execute: measured on
psqlodbc, a Parse and Describe round trip and the server planning it again, 0.3 ms
for a small statement and 1.5 ms for a 1,000-row upsert, about 15% of its time.

So equal texts are passed to pyodbc as one string object, and each statement that
changes data gets a cursor of its own, where it stays prepared.
Statements that return rows (``SELECT``, ``WITH``) keep sharing one cursor, as before.
SQL Server without MARS allows one pending result set per connection: a data change
never leaves one, and the rows a read left unfetched are discarded before the next
statement runs elsewhere, as executing on the same cursor always did.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import suppress
from typing import Any

import pyodbc

#: Data-changing statements kept prepared per connection (least recently used go).
MAX_PREPARED = 32
_ROW_RETURNING = ("SELECT", "WITH")


class StatementCursors:
    """Cursor-like: ``execute`` picks the cursor for the statement; the rest (fetches,
    ``rowcount``, ``description``) answer for the last statement executed."""

    def __init__(self, connection: pyodbc.Connection) -> None:
        self.connection = connection
        self._reads = connection.cursor()
        self._read_sql = ""  # the text last read with, as the object pyodbc was given
        #: statement text -> (its cursor, the text object that cursor has prepared)
        self._writes: OrderedDict[str, tuple[pyodbc.Cursor, str]] = OrderedDict()
        self._last: pyodbc.Cursor = self._reads
        self._reads_open = False  # the shared cursor may hold unfetched rows

    def execute(self, sql: str, *params: Any) -> pyodbc.Cursor:
        if sql.lstrip()[:6].upper().startswith(_ROW_RETURNING):
            cursor = self._reads
            if sql == self._read_sql:
                sql = self._read_sql
            self._read_sql = sql
            self._reads_open = True
        else:
            cursor, sql = self._writer(sql)
            if self._reads_open:
                # Discard the rows a read left unfetched (SQLMoreResults). When it had
                # fetched them all, a driver may call this out of sequence: harmless.
                with suppress(pyodbc.Error):
                    self._reads.nextset()
                self._reads_open = False
        self._last = cursor
        return cursor.execute(sql, *params)

    def _writer(self, sql: str) -> tuple[pyodbc.Cursor, str]:
        found = self._writes.get(sql)
        if found is not None:
            self._writes.move_to_end(sql)
            return found
        if len(self._writes) >= MAX_PREPARED:
            _, (oldest, _) = self._writes.popitem(last=False)
            oldest.close()
        found = self._writes[sql] = (self.connection.cursor(), sql)
        return found

    def fetchone(self) -> Any:
        return self._last.fetchone()

    def fetchall(self) -> list[Any]:
        return self._last.fetchall()

    @property
    def rowcount(self) -> int:
        return int(self._last.rowcount)

    @property
    def description(self) -> Any:
        return self._last.description
