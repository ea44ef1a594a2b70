"""Tiny statement builders for the area's bookkeeping tables.

Identifiers only through ``dialect.quote``, values only as typed parameters
(``dialect.placeholder`` + ``dialect.to_db``), reads through ``dialect.from_db``: the
foundation's rules, in one place for the three tables of this area.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stores.sql import Dialect, Table


def insert(dialect: Dialect, table: Table, values: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """An INSERT of one row; ``values`` maps column names to Python values."""
    q = dialect.quote
    cols = [table.col(name) for name in values]
    marks = ", ".join(dialect.placeholder(c.kind) for c in cols)
    sql = f"INSERT INTO {q(table.name)} ({', '.join(q(c.name) for c in cols)}) VALUES ({marks})"
    return sql, [dialect.to_db(c.kind, values[c.name]) for c in cols]


def select(dialect: Dialect, table: Table) -> str:
    """``SELECT <every column> FROM table`` in declaration order (see :func:`record`)."""
    cols = ", ".join(dialect.quote(c.name) for c in table.columns)
    return f"SELECT {cols} FROM {dialect.quote(table.name)}"


def record(dialect: Dialect, table: Table, row: Sequence[Any]) -> dict[str, Any]:
    """A fetched row of :func:`select` as ``{column: python value}``."""
    return {c.name: dialect.from_db(c.kind, v) for c, v in zip(table.columns, row, strict=True)}


def is_duplicate_key(exc: BaseException) -> bool:
    """A primary-key clash (SQLSTATE class 23): another worker inserted the row first."""
    state = str(exc.args[0]) if getattr(exc, "args", None) else ""
    return state.startswith("23")
