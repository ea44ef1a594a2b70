"""Backfill runs as the console shows them: progress, rate, ETA, pause state.

Reads the backfill area's own records (``backfill.partitions.runs_for`` /
``partitions_of``, ``backfill.control``, ``backfill.ledger``) and adds what an operator
watching a copy wants: percent done, rows per second and time left. The rate is
measured between successive looks at the same run in this process (the console polls),
over at most the last :data:`RATE_WINDOW_S` seconds; before a second look, or after a
long gap, it is the run's average since its first partition started.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from datetime import datetime
from typing import Any

from backfill import control, ledger
from backfill.partitions import PENDING, Partition, Run, partitions_of, runs_for
from core.clock import now_utc
from stores.runtime import Runtime

#: Recent rates are measured over at most this many seconds of observations.
RATE_WINDOW_S = 120.0


class RateTracker:
    """(monotonic time, rows done) observations per run, for a recent rows/s."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self._window = window_s
        self._seen: dict[str, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def observe(self, run_id: str, done: int, at: float | None = None) -> float | None:
        """Record ``done`` now; the rows/s since the oldest observation in the window."""
        now = time.monotonic() if at is None else at
        with self._lock:
            seen = self._seen.setdefault(run_id, deque())
            if seen and done < seen[-1][1]:  # restarted run: counts began again
                seen.clear()
            seen.append((now, done))
            while len(seen) > 2 and now - seen[0][0] > self._window:
                seen.popleft()
            first_t, first_done = seen[0]
            if now - first_t < 1.0 or now - first_t > 2 * self._window:
                return None
            return (done - first_done) / (now - first_t)


RATES = RateTracker()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _eta_s(remaining: int, rate: float | None) -> float | None:
    if remaining <= 0:
        return 0.0
    if not rate or rate <= 0:
        return None
    return remaining / rate


def run_progress(
    run: Run,
    parts: list[Partition],
    *,
    paused: bool,
    now: datetime | None = None,
    tracker: RateTracker | None = None,
) -> dict[str, Any]:
    """One run's counts, percent, rate (rows/s) and ETA (seconds; None when unknown)."""
    now = now or now_utc()
    total = sum(max(p.est_rows, p.rows_read) for p in parts)
    done = sum(p.rows_read for p in parts)
    running = run.status != "done"
    starts = [p.started_at for p in parts if p.started_at]
    started = min(starts) if starts else None
    end = run.finished_at if not running and run.finished_at else now
    elapsed = (end - started).total_seconds() if started else 0.0
    average = done / elapsed if elapsed > 0 else None
    recent = (tracker or RATES).observe(run.run_id, done) if running else None
    rate = recent if recent is not None else average
    remaining = max(0, total - done)
    leased = [
        p
        for p in parts
        if p.status == PENDING and p.owner and p.lease_expires and p.lease_expires > now
    ]
    if not running:
        state = "done"
    elif paused:
        state = "paused"
    elif leased:
        state = "running"
    else:
        state = "stalled" if done else "pending"  # nobody holds a lease right now
    return {
        "run_id": run.run_id,
        "entity": run.entity,
        "status": run.status,
        "state": state,
        "source": run.source,
        "clients": run.selection,
        "partitions": len(parts),
        "partitions_done": sum(p.status != PENDING for p in parts),
        "workers": len({p.owner for p in leased}),
        "rows_total": total,
        "rows_done": done,
        "rows_applied": sum(p.rows_applied for p in parts),
        "rows_stale": sum(p.rows_stale for p in parts),
        "bad_docs": sum(p.bad_docs for p in parts),
        "percent": round(100.0 * done / total, 1) if total else (100.0 if not running else 0.0),
        "rate_rows_s": round(rate, 1) if rate is not None else None,
        "rate_basis": "recent" if recent is not None else "average",
        "eta_s": (
            None
            if state in ("paused", "stalled", "pending") and remaining
            else _eta_s(remaining, rate)
        ),
        "started_at": _iso(started),
        "created_at": _iso(run.created_at),
        "finished_at": _iso(run.finished_at),
    }


def entity_backfill(rt: Runtime, entity: str) -> dict[str, Any]:
    """Pause state and every run of one entity, newest first."""
    name = rt.cfg.entity(entity).name
    ledger.ensure_tables(rt.sql)
    paused = control.is_paused(rt.sql, name)
    runs = [
        run_progress(run, partitions_of(rt.sql, run.run_id), paused=paused)
        for run in reversed(runs_for(rt.sql, name))
    ]
    return {"entity": name, "paused": paused, "runs": runs}


def all_backfills(rt: Runtime) -> list[dict[str, Any]]:
    return [entity_backfill(rt, name) for name in rt.cfg.entities]


def find_run(rt: Runtime, run_id: str) -> dict[str, Any] | None:
    """One run with its partitions (checkpoints and leases), or None."""
    for name in rt.cfg.entities:
        ledger.ensure_tables(rt.sql)
        for run in runs_for(rt.sql, name):
            if run.run_id == run_id:
                parts = partitions_of(rt.sql, run_id)
                out = run_progress(run, parts, paused=control.is_paused(rt.sql, name))
                out["partition_list"] = [
                    {
                        "part": p.part,
                        "client": p.client,
                        "status": p.status,
                        "owner": p.owner,
                        "lease_expires": _iso(p.lease_expires),
                        "last_key": p.last_key,
                        "rows_read": p.rows_read,
                        "est_rows": p.est_rows,
                        "rows_applied": p.rows_applied,
                        "bad_docs": p.bad_docs,
                        "started_at": _iso(p.started_at),
                        "finished_at": _iso(p.finished_at),
                    }
                    for p in parts
                ]
                return out
    return None


def set_paused(rt: Runtime, entity: str, paused: bool, reason: str = "") -> dict[str, Any]:
    """Pause or resume an entity's backfill on every worker (``backfill.control``)."""
    name = rt.cfg.entity(entity).name
    ledger.ensure_tables(rt.sql)
    control.set_paused(rt.sql, name, paused, reason)
    return {"entity": name, "paused": control.is_paused(rt.sql, name)}


def ledger_by_client(rt: Runtime, entity: str) -> dict[str, ledger.LedgerEntry]:
    return {e.client: e for e in ledger.entries(rt.sql, entity)}
