"""Read-only queries over other areas' bookkeeping tables, built from their declarations.

Only for reads the owning area does not offer as a function (a client's verification
history newest first, counts grouped by client or subscription): identifiers through
``dialect.quote``, values as ``?`` parameters bound with ``dialect.to_db`` and read
back with ``dialect.from_db``, so the same code runs on SQL Server, PostgreSQL and
SQLite. Reads only: every write goes through the owning area's functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from stores.sql import SqlStore, Table


def _where(
    store: SqlStore, table: Table, where: Mapping[str, Any], since: tuple[str, datetime] | None
) -> tuple[str, list[Any]]:
    d = store.dialect
    parts, params = [], []
    for name, value in where.items():
        parts.append(f"{d.quote(name)} = ?")
        params.append(d.to_db(table.col(name).kind, value))
    if since is not None:
        column, at = since
        parts.append(f"{d.quote(column)} >= ?")
        params.append(d.to_db("datetime", at))
    return " AND ".join(parts) or "1 = 1", params


def select_rows(
    store: SqlStore,
    table: Table,
    where: Mapping[str, Any],
    *,
    order_by: Sequence[str] = (),
    descending: bool = False,
    limit: int | None = None,
    since: tuple[str, datetime] | None = None,
) -> list[dict[str, Any]]:
    """Rows as dicts of Python values; ``since=(column, t)`` keeps rows at or after t."""
    d = store.dialect
    cond, params = _where(store, table, where, since)
    sql = (
        f"SELECT {', '.join(d.quote(c.name) for c in table.columns)} "
        f"FROM {d.quote(table.name)} WHERE {cond}"
    )
    if order_by:
        direction = " DESC" if descending else ""
        sql += " ORDER BY " + ", ".join(f"{d.quote(c)}{direction}" for c in order_by)
        if limit is not None:
            sql = d.limit(sql, limit)
    with store.transaction() as cur:
        cur.execute(sql, params)
        records = cur.fetchall()
    return [
        {c.name: d.from_db(c.kind, v) for c, v in zip(table.columns, rec, strict=True)}
        for rec in records
    ]


def count_by(
    store: SqlStore,
    table: Table,
    group: str,
    where: Mapping[str, Any],
    *,
    since: tuple[str, datetime] | None = None,
) -> dict[Any, int]:
    """``SELECT group, COUNT(*) ... GROUP BY group`` as a dict."""
    d = store.dialect
    cond, params = _where(store, table, where, since)
    column = d.quote(group)
    sql = f"SELECT {column}, COUNT(*) FROM {d.quote(table.name)} WHERE {cond} GROUP BY {column}"
    with store.transaction() as cur:
        cur.execute(sql, params)
        records = cur.fetchall()
    kind = table.col(group).kind
    return {d.from_db(kind, rec[0]): int(rec[1]) for rec in records}
