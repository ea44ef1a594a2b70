"""Small, dialect-safe statements over cutover's own bookkeeping tables.

Checkpoints, leases, the ledger, the failure log, audit and counters are all declared
as :class:`~stores.sql.Table`; every area reads and writes them through these
functions. Identifiers only through ``dialect.quote``, values only as ``?`` parameters
bound with ``dialect.to_db`` and read back with ``dialect.from_db``, so the same code
runs on SQL Server, PostgreSQL and SQLite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .dialects import Dialect
from .schema import Table


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


def select_sql(dialect: Dialect, table: Table) -> str:
    """``SELECT <every column> FROM table`` in declaration order (see :func:`record`)."""
    cols = ", ".join(dialect.quote(c.name) for c in table.columns)
    return f"SELECT {cols} FROM {dialect.quote(table.name)}"


def record(dialect: Dialect, table: Table, row: Sequence[Any]) -> dict[str, Any]:
    """A fetched row of :func:`select_sql` as ``{column: python value}``."""
    return {c.name: dialect.from_db(c.kind, v) for c, v in zip(table.columns, row, strict=True)}


def select(
    cur: Any,
    dialect: Dialect,
    table: Table,
    where: Mapping[str, Any],
    *,
    extra: str = "",
    extra_params: Sequence[Any] = (),
    order_by: Sequence[str] = (),
    descending: bool = False,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Rows of a bookkeeping table as dicts of Python values."""
    q = dialect.quote
    cond, params = _where(dialect, table, where)
    sql = f"{select_sql(dialect, table)} WHERE {cond}"
    if extra:
        sql += f" AND ({extra})"
        params.extend(extra_params)
    if order_by:
        direction = " DESC" if descending else ""
        sql += " ORDER BY " + ", ".join(f"{q(c)}{direction}" for c in order_by)
        if limit is not None:
            sql = dialect.limit(sql, limit)
    cur.execute(sql, params)
    return [record(dialect, table, rec) for rec in cur.fetchall()]


def count_by(
    cur: Any,
    dialect: Dialect,
    table: Table,
    group: str,
    where: Mapping[str, Any],
    *,
    extra: str = "",
    extra_params: Sequence[Any] = (),
) -> dict[Any, int]:
    """``SELECT group, COUNT(*) ... GROUP BY group`` as a dict."""
    q = dialect.quote
    cond, params = _where(dialect, table, where)
    if extra:
        cond += f" AND ({extra})"
        params.extend(extra_params)
    column = q(group)
    cur.execute(
        f"SELECT {column}, COUNT(*) FROM {q(table.name)} WHERE {cond} GROUP BY {column}", params
    )
    kind = table.col(group).kind
    return {dialect.from_db(kind, rec[0]): int(rec[1]) for rec in cur.fetchall()}


def sum_by(
    cur: Any,
    dialect: Dialect,
    table: Table,
    group: Sequence[str],
    sums: Sequence[str],
    where: Mapping[str, Any],
    *,
    extra: str = "",
    extra_params: Sequence[Any] = (),
) -> dict[tuple[Any, ...], tuple[int, ...]]:
    """``SELECT group..., SUM(s)... GROUP BY group...`` as ``{group values: sums}``.

    Integer sums (``COALESCE(SUM(s), 0)``); with no ``group``, one total keyed ``()``.
    """
    q = dialect.quote
    cond, params = _where(dialect, table, where)
    if extra:
        cond += f" AND ({extra})"
        params.extend(extra_params)
    picks = [q(g) for g in group] + [f"COALESCE(SUM({q(s)}), 0)" for s in sums]
    sql = f"SELECT {', '.join(picks)} FROM {q(table.name)} WHERE {cond}"
    if group:
        sql += " GROUP BY " + ", ".join(q(g) for g in group)
    cur.execute(sql, params)
    kinds = [table.col(g).kind for g in group]
    n = len(group)
    return {
        tuple(dialect.from_db(k, v) for k, v in zip(kinds, rec[:n], strict=True)): tuple(
            int(v) for v in rec[n:]
        )
        for rec in cur.fetchall()
    }


def in_list(
    dialect: Dialect, table: Table, column: str, values: Sequence[Any]
) -> tuple[str, list[Any]]:
    """``column IN (?, ...)`` and its parameters, for ``extra=`` (callers bound the count:
    SQL Server takes at most 2,100 parameters per statement)."""
    if not values:
        return "1 = 0", []
    kind = table.col(column).kind
    marks = ", ".join("?" for _ in values)
    return f"{dialect.quote(column)} IN ({marks})", [dialect.to_db(kind, v) for v in values]


def insert_sql(dialect: Dialect, table: Table, values: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """An INSERT of one row (statement, parameters); ``values`` maps columns to values."""
    q = dialect.quote
    cols = [table.col(name) for name in values]
    marks = ", ".join(dialect.placeholder(c.kind) for c in cols)
    sql = f"INSERT INTO {q(table.name)} ({', '.join(q(c.name) for c in cols)}) VALUES ({marks})"
    return sql, [dialect.to_db(c.kind, values[c.name]) for c in cols]


def insert(cur: Any, dialect: Dialect, table: Table, values: Mapping[str, Any]) -> None:
    cur.execute(*insert_sql(dialect, table, values))


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


def delete(
    cur: Any,
    dialect: Dialect,
    table: Table,
    where: Mapping[str, Any],
    *,
    extra: str = "",
    extra_params: Sequence[Any] = (),
) -> int:
    cond, params = _where(dialect, table, where)
    if extra:
        cond += f" AND ({extra})"
        params.extend(extra_params)
    cur.execute(f"DELETE FROM {dialect.quote(table.name)} WHERE {cond}", params)
    return int(cur.rowcount or 0)


def is_duplicate_key(exc: BaseException) -> bool:
    """A primary-key clash (SQLSTATE class 23): another worker inserted the row first."""
    state = str(exc.args[0]) if getattr(exc, "args", None) else ""
    return state.startswith("23")
