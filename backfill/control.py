"""Pause and resume a running backfill from anywhere that reaches the SQL store.

The flag is one row per entity in ``backfill_control``; every worker reads it once per
batch, so ``cutover backfill pause`` takes effect within one batch on every machine,
and ``resume`` lets paused workers go on without restarting them.
"""

from __future__ import annotations

from typing import Any

from core.clock import now_utc
from stores.sql import SqlStore, bookkeeping

from .tables import CONTROL


def set_paused(sql: SqlStore, entity: str, paused: bool, reason: str = "") -> None:
    now = now_utc()
    values = {"paused": paused, "reason": reason or None, "updated_at": now}
    with sql.transaction() as cur:
        if not bookkeeping.update(cur, sql.dialect, CONTROL, values, {"entity": entity}):
            bookkeeping.insert(cur, sql.dialect, CONTROL, {"entity": entity, **values})


def is_paused(sql: SqlStore, entity: str, *, cursor: Any = None) -> bool:
    """Whether the entity is paused; in ``cursor``'s transaction when given (the backfill
    reads it with each batch's commit, which saves a round trip per batch)."""
    if cursor is not None:
        recs = bookkeeping.select(cursor, sql.dialect, CONTROL, {"entity": entity})
    else:
        with sql.transaction() as cur:
            recs = bookkeeping.select(cur, sql.dialect, CONTROL, {"entity": entity})
    return bool(recs and recs[0]["paused"])
