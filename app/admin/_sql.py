"""Read-only queries over other areas' bookkeeping tables, for the console.

Only for reads the owning area does not offer as a function (a client's verification
history newest first, counts grouped by client or subscription). They go through
:mod:`stores.sql.bookkeeping` like the owners' own; this module only adds a store
transaction and the ``since`` window. Reads only: every write goes through the
owning area's functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from stores.sql import SqlStore, Table, bookkeeping


def _since(store: SqlStore, since: tuple[str, datetime] | None) -> tuple[str, list[Any]]:
    """``column >= t`` for a ``since=(column, t)`` window, or no condition."""
    if since is None:
        return "", []
    column, at = since
    return f"{store.dialect.quote(column)} >= ?", [store.dialect.to_db("datetime", at)]


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
    extra, params = _since(store, since)
    with store.transaction() as cur:
        return bookkeeping.select(
            cur,
            store.dialect,
            table,
            where,
            extra=extra,
            extra_params=params,
            order_by=order_by,
            descending=descending,
            limit=limit,
        )


def count_by(
    store: SqlStore,
    table: Table,
    group: str,
    where: Mapping[str, Any],
    *,
    since: tuple[str, datetime] | None = None,
) -> dict[Any, int]:
    """``SELECT group, COUNT(*) ... GROUP BY group`` as a dict."""
    extra, params = _since(store, since)
    with store.transaction() as cur:
        return bookkeeping.count_by(
            cur, store.dialect, table, group, where, extra=extra, extra_params=params
        )
