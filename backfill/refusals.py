"""Rows the SQL server refuses for their data, found by splitting the batch.

The mapping keeps every value within the contract's limits (:mod:`core.limits`),
so a server should take every mapped row. When one does not (a key longer than its
column, a character its driver cannot encode, a server with a rule of its own), the
copy must not stop on that row, nor drop its neighbours: the batch is split in halves,
each half written in a transaction that is then rolled back, until the refused rows
are alone; they become bad documents with the server's reason, and the caller writes
the rest, with its bookkeeping, in one transaction as usual.

Only a refusal *for the data* is split: a data exception (SQLSTATE class 22, the
driver's ``DataError``) or text the driver cannot encode. A failure of the store itself
(connection, timeout, deadlock, a lost lease) is raised as before and retried by the
caller; anything else (a missing table, a bug) is raised too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pyodbc

from core.config import Entity
from core.redaction import redact
from stores.sql import PreparedRows, SqlStore

from .documents import BadDoc, bad_document


def refused_for_data(exc: BaseException) -> bool:
    """Whether a write failed because of the data it carried (not because of the store)."""
    if isinstance(exc, UnicodeError | pyodbc.DataError):
        return True
    return isinstance(exc, pyodbc.Error) and bool(exc.args) and str(exc.args[0]).startswith("22")


def reason(exc: BaseException) -> str:
    """A refusal as a bad document's reason (no connection details: see ``redact``)."""
    text = redact(str(exc)) if isinstance(exc, pyodbc.Error) else f"{type(exc).__name__}: {exc}"
    return f"the SQL store refused it: {text}"[:500]


def split_refused(
    sql: SqlStore, entity: Entity, prepared: PreparedRows
) -> tuple[PreparedRows, list[BadDoc]]:
    """The rows of ``prepared`` the store takes, and a bad document per row it refuses.

    Each probe writes part of the batch and rolls it back, so nothing is left written;
    a batch of n rows with k refused rows costs about 2k log2(n) probes. A store
    failure during a probe is raised, as it would be from the write itself.
    """
    rows = [row for chunk in prepared.chunks for row in json.loads(chunk)]
    taken: list[list[Any]] = []
    bad: list[BadDoc] = []
    pending = [rows]
    while pending:
        part = pending.pop()
        refusal = _probe(sql, entity, _prepared(sql, prepared, part, len(part)))
        if refusal is None:
            taken.extend(part)
        elif len(part) == 1:
            key, client = part[0][0], part[0][1]
            bad.append(bad_document(key, client, reason(refusal), "the SQL write"))
        else:
            middle = len(part) // 2
            pending += [part[middle:], part[:middle]]
    taken.sort(key=lambda row: row[0])
    return _prepared(sql, prepared, taken, prepared.received - len(bad)), bad


class _RolledBack(Exception):
    """Ends a probe's transaction: what it wrote is rolled back."""


def _probe(sql: SqlStore, entity: Entity, part: PreparedRows) -> BaseException | None:
    """Why the store refuses ``part`` for its data, or None when it takes it."""
    try:
        with sql.transaction() as cur:
            sql.apply(entity, part, cursor=cur)
            raise _RolledBack()
    except _RolledBack:
        return None
    except Exception as exc:
        if refused_for_data(exc):
            return exc
        raise


def _prepared(
    sql: SqlStore, like: PreparedRows, rows: Iterable[list[Any]], received: int
) -> PreparedRows:
    """``rows`` (value lists as the batch's chunks hold them, in key order) as a batch."""
    rows = list(rows)
    step = sql.dialect.max_rows
    chunks = tuple(
        json.dumps(rows[at : at + step], ensure_ascii=False, separators=(",", ":"))
        for at in range(0, len(rows), step)
    )
    key_range = (rows[0][0], rows[-1][0]) if rows else None
    return PreparedRows(like.entity, chunks, received, like.written_at, key_range)
