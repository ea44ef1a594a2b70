"""Small, dialect-safe statements over the backfill's bookkeeping tables.

Every statement is built from a :class:`~stores.sql.Table` declaration: identifiers
only through ``dialect.quote``, values only as ``?`` parameters bound with
``dialect.to_db`` and read back with ``dialect.from_db``, so the same code runs on
SQL Server, PostgreSQL and SQLite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stores.sql import Dialect, Table


def _where(dialect: Dialect, table: Table, where: Mapping[str, Any]) -> tuple[str, list[Any]]:
    q = dialect.quote
    parts, params = [], []
    for name, value in where.items():
        if value is None:
            parts.append(f"{q(name)} IS NULL")
        else:
            parts.append(f"{q(name)} = ?")
            params.append(dialect.to_db(table.col(name).kind, value))
    return " AND ".join(parts) or "1 = 1", params


def select(
    cur: Any,
    dialect: Dialect,
    table: Table,
    where: Mapping[str, Any],
    *,
    extra: str = "",
    extra_params: Sequence[Any] = (),
    order_by: Sequence[str] = (),
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Rows of a bookkeeping table as dicts of Python values."""
    q = dialect.quote
    cols = ", ".join(q(c.name) for c in table.columns)
    cond, params = _where(dialect, table, where)
    sql = f"SELECT {cols} FROM {q(table.name)} WHERE {cond}"
    if extra:
        sql += f" AND ({extra})"
        params.extend(extra_params)
    if order_by:
        sql += " ORDER BY " + ", ".join(q(c) for c in order_by)
        if limit is not None:
            sql = dialect.limit(sql, limit)
    cur.execute(sql, params)
    return [
        {c.name: dialect.from_db(c.kind, v) for c, v in zip(table.columns, rec, strict=True)}
        for rec in cur.fetchall()
    ]


def insert(cur: Any, dialect: Dialect, table: Table, values: Mapping[str, Any]) -> None:
    q = dialect.quote
    names = list(values)
    cur.execute(
        f"INSERT INTO {q(table.name)} ({', '.join(q(n) for n in names)}) "
        f"VALUES ({', '.join('?' for _ in names)})",
        [dialect.to_db(table.col(n).kind, values[n]) for n in names],
    )


def insert_missing(cur: Any, dialect: Dialect, table: Table, values: Mapping[str, Any]) -> bool:
    """Insert unless a row with the same primary key exists; True when inserted.

    ``INSERT ... SELECT ... WHERE NOT EXISTS`` is portable across the three dialects.
    Two transactions racing on the same key may still collide on the primary key; the
    loser's statement fails and its caller retries (which then finds the row).
    """
    q = dialect.quote
    names = list(values)
    marks = ", ".join(_typed_mark(dialect, table, n) for n in names)
    cond = " AND ".join(f"{q(k)} = ?" for k in table.primary_key)
    params = [dialect.to_db(table.col(n).kind, values[n]) for n in names]
    params += [dialect.to_db(table.col(k).kind, values[k]) for k in table.primary_key]
    cur.execute(
        f"INSERT INTO {q(table.name)} ({', '.join(q(n) for n in names)}) SELECT {marks} "
        f"WHERE NOT EXISTS (SELECT 1 FROM {q(table.name)} WHERE {cond})",
        params,
    )
    return bool(cur.rowcount and cur.rowcount > 0)


def _typed_mark(dialect: Dialect, table: Table, name: str) -> str:
    """PostgreSQL cannot infer a parameter's type in a bare SELECT list: cast it."""
    if dialect.name != "postgresql":
        return dialect.placeholder(table.col(name).kind)
    col = table.col(name)
    return f"CAST(? AS {dialect.column_type(col.kind, col.max_length).split(' COLLATE')[0]})"


def update(
    cur: Any,
    dialect: Dialect,
    table: Table,
    values: Mapping[str, Any],
    where: Mapping[str, Any],
    *,
    add: Mapping[str, int] | None = None,
    extra: str = "",
    extra_params: Sequence[Any] = (),
) -> int:
    """UPDATE ... SET values (and ``col = COALESCE(col, 0) + n`` for ``add``); rowcount."""
    q = dialect.quote
    sets = [f"{q(n)} = ?" for n in values]
    params = [dialect.to_db(table.col(n).kind, v) for n, v in values.items()]
    for name, n in (add or {}).items():
        sets.append(f"{q(name)} = COALESCE({q(name)}, 0) + ?")
        params.append(int(n))
    cond, where_params = _where(dialect, table, where)
    sql = f"UPDATE {q(table.name)} SET {', '.join(sets)} WHERE {cond}"
    params += where_params
    if extra:
        sql += f" AND ({extra})"
        params.extend(extra_params)
    cur.execute(sql, params)
    return int(cur.rowcount or 0)


def delete(cur: Any, dialect: Dialect, table: Table, where: Mapping[str, Any]) -> int:
    cond, params = _where(dialect, table, where)
    cur.execute(f"DELETE FROM {dialect.quote(table.name)} WHERE {cond}", params)
    return int(cur.rowcount or 0)
