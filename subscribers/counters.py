"""Persistent per-subscription counters, written in each batch's own transaction.

Prometheus metrics live and die with one worker process; these survive it and add up
across every worker on a subscription (each batch adds its deltas with ``x = x + ?``),
so ``cutover subs list`` run anywhere shows the handler's totals.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyodbc

from core.clock import now_utc
from stores.sql import SqlStore, StatementCursors, bookkeeping

from .tables import COUNTERS


@dataclass(frozen=True)
class Counts:
    subscription: str
    processed: int = 0
    applied: int = 0
    stale: int = 0
    failed: int = 0
    last_event_at: datetime | None = None
    last_batch_at: datetime | None = None


def create(store: SqlStore, subscription: str) -> None:
    """Create the subscription's row at worker start, so batches only ever UPDATE it.

    Two workers starting at once may both try: the loser's duplicate-key error is
    ignored, the row exists either way.
    """
    q = store.dialect.quote
    try:
        with store.transaction() as cur:
            cur.execute(
                f"SELECT 1 FROM {q(COUNTERS.name)} WHERE {q('subscription')} = ?", subscription
            )
            if cur.fetchone() is None:
                cur.execute(*bookkeeping.insert_sql(store.dialect, COUNTERS, _zero(subscription)))
    except pyodbc.Error as exc:
        if not bookkeeping.is_duplicate_key(exc):
            raise


def _zero(subscription: str) -> dict[str, Any]:
    return {"subscription": subscription, "processed": 0, "applied": 0, "stale": 0, "failed": 0}


def add(
    store: SqlStore,
    cursor: StatementCursors,
    subscription: str,
    *,
    applied: int,
    stale: int,
    failed: int,
    newest_event: datetime | None,
) -> None:
    """Add one batch's deltas inside the caller's transaction.

    Called last in the transaction: the row is a hot spot shared by every worker of the
    subscription, so its lock is held only for the commit.
    """
    d, q = store.dialect, store.dialect.quote
    now = now_utc()
    sets = [
        f"{q(name)} = {q(name)} + {d.placeholder('int')}"
        for name in ("processed", "applied", "stale", "failed")
    ]
    params: list[Any] = [applied + stale + failed, applied, stale, failed]
    sets.append(f"{q('last_batch_at')} = {d.placeholder('datetime')}")
    params.append(d.to_db("datetime", now))
    if newest_event is not None:
        mark = d.placeholder("datetime")
        col = q("last_event_at")
        sets.append(f"{col} = CASE WHEN {col} IS NULL OR {col} < {mark} THEN {mark} ELSE {col} END")
        value = d.to_db("datetime", newest_event)
        params += [value, value]
    cursor.execute(
        f"UPDATE {q(COUNTERS.name)} SET {', '.join(sets)} WHERE {q('subscription')} = ?",
        [*params, subscription],
    )
    if cursor.rowcount == 0:  # the row was deleted under a running worker: start again
        row = _zero(subscription) | {
            "processed": applied + stale + failed,
            "applied": applied,
            "stale": stale,
            "failed": failed,
            "last_event_at": newest_event,
            "last_batch_at": now,
        }
        cursor.execute(*bookkeeping.insert_sql(d, COUNTERS, row))


def read_all(store: SqlStore) -> dict[str, Counts]:
    """Every subscription's totals."""
    with store.transaction() as cur:
        cur.execute(bookkeeping.select_sql(store.dialect, COUNTERS))
        rows = [bookkeeping.record(store.dialect, COUNTERS, r) for r in cur.fetchall()]
    return {r["subscription"]: Counts(**r) for r in rows}
