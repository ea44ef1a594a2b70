"""Statements keep their prepared cursor, and the cursor-like answers as one cursor did.

pyodbc re-prepares a statement unless it is given the very string object it prepared
last; ``StatementCursors`` hands it that object for equal texts built anew, on a
cursor per data-changing statement. What a caller sees must not change: fetches and
``rowcount`` answer for the last statement, and a read left half-fetched does not
block the next statement (as SQL Server without MARS would).
"""

from __future__ import annotations

from stores.sql import SqlStore
from stores.sql._cursors import MAX_PREPARED


def _text(*parts: str) -> str:
    """The same statement as a new string object each time, as callers build it."""
    return "".join(parts)


def test_equal_statements_built_anew_reuse_their_cursor(sql_store: SqlStore) -> None:
    with sql_store.transaction() as cur:
        cur.execute(_text("CREATE TABLE t_cur (k INTEGER PRIMARY KEY, v INTEGER)"))
        insert = [
            cur.execute(_text("INSERT INTO t_cur (k, v) ", "VALUES (?, ?)"), k, 0) for k in range(3)
        ]
        update = cur.execute(_text("UPDATE t_cur SET v = v + 1 ", "WHERE k >= ?"), 1)
        assert cur.rowcount == 2
        read = [cur.execute(_text("SELECT k, v FROM t_cur ", "ORDER BY k")) for _ in range(2)]
        assert [tuple(r) for r in cur.fetchall()] == [(0, 0), (1, 1), (2, 1)]
    assert len({id(c) for c in insert}) == 1  # one cursor for one statement
    assert update is not insert[0]  # another statement, another cursor
    assert read[0] is read[1] and read[0] not in (insert[0], update)


def test_a_half_fetched_read_does_not_block_the_next_statement(sql_store: SqlStore) -> None:
    """The rows left unfetched are dropped, as executing on one cursor always did; the
    write and the reads after it see the right data."""
    with sql_store.transaction() as cur:
        cur.execute("CREATE TABLE t_half (k INTEGER PRIMARY KEY)")
        for k in range(5):
            cur.execute("INSERT INTO t_half (k) VALUES (?)", k)
        first = cur.execute("SELECT k FROM t_half ORDER BY k").fetchone()
        assert first is not None and first[0] == 0
        cur.execute("DELETE FROM t_half WHERE k < ?", 3)
        assert cur.rowcount == 3
        assert [r[0] for r in cur.execute("SELECT k FROM t_half ORDER BY k").fetchall()] == [3, 4]


def test_more_statements_than_kept_prepared_still_run(sql_store: SqlStore) -> None:
    """The least recently used cursors are closed; their statements run again fine."""
    with sql_store.transaction() as cur:
        cur.execute("CREATE TABLE t_many (k INTEGER PRIMARY KEY, v INTEGER)")
        cur.execute("INSERT INTO t_many (k, v) VALUES (1, 0)")
        for _ in range(2):
            for i in range(MAX_PREPARED + 5):
                cur.execute(f"UPDATE t_many SET v = v + {i} WHERE k = ?", 1)
                assert cur.rowcount == 1
        total = cur.execute("SELECT v FROM t_many").fetchone()
    assert total is not None and total[0] == 2 * sum(range(MAX_PREPARED + 5))
