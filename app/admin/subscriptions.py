"""Subscription health, the failure log and replays, through the subscribers area.

Counts come from the SQL store (``subscribers.counters``: added up over every worker,
in each batch's own transaction) and the failure log (``subscribers.failures``), so
they are right whichever process asks. The server side (does the subscription exist,
does it drift from its declaration, backlog) comes from ``subscribers.manage.status``,
which talks to Pub/Sub: it runs with a deadline, at most one check at a time, and its
last answer is reused for :data:`SERVER_TTL_S`, so a Pub/Sub outage never stalls the
console; the counts are shown regardless.

Lag is what the counters can prove: at the last committed batch, how far its newest
event's ``occurred_at`` trailed the commit (``lag_s``), and how long ago that batch
was (``idle_s``). Replays go through ``subscribers.failures.replay`` (the same
version-guarded write as the stream, audited by that area).
"""

from __future__ import annotations

import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime
from typing import Any

import pyodbc

from core.clock import now_utc
from core.config import Subscription
from core.redaction import redact
from stores.runtime import Runtime
from stores.sql import SqlStore, StoreUnavailable
from subscribers import counters, failures, retention
from subscribers.tables import FAILURES, TABLES

from ._sql import count_by

#: How long a Pub/Sub answer about the subscriptions is reused.
SERVER_TTL_S = 15.0
#: How long the console waits for Pub/Sub before showing the counts without it.
SERVER_DEADLINE_S = 3.0
#: Most failures one replay request handles (the rest stay open for the next one).
MAX_REPLAY = 10_000


_READY: weakref.WeakSet[SqlStore] = weakref.WeakSet()


def ensure_tables(store: SqlStore) -> None:
    if store not in _READY:
        store.ensure_schema(TABLES)
        _READY.add(store)


# -- the server side, bounded ------------------------------------------------------------
class _ServerState:
    """``manage.status`` with a deadline, one call in flight, answers cached briefly."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="subs-status")
        self._pending: dict[tuple[Any, ...], Future[dict[str, Any]]] = {}
        self._cache: dict[tuple[Any, ...], tuple[float, dict[str, Any]]] = {}

    @staticmethod
    def _fetch(rt: Runtime) -> dict[str, Any]:
        from subscribers.manage import status

        return {
            s.name: {
                "exists": s.exists,
                "declared": s.declared,
                "drift": [str(d) for d in s.drift],
                "backlog": s.backlog,
                "topic": s.topic,
                "sink": s.sink,
            }
            for s in status(rt, counts={})  # counts come from the SQL store, read apart
        }

    def get(self, rt: Runtime) -> tuple[dict[str, Any] | None, str | None]:
        """(state per subscription, None) or (last known or None, why it is missing)."""
        key = (
            rt.settings.pubsub_project,
            rt.settings.pubsub_emulator_host,
            tuple(rt.cfg.subscriptions),
        )
        with self._lock:
            cached = self._cache.get(key)
            if cached and time.monotonic() - cached[0] < SERVER_TTL_S:
                return cached[1], None
            future = self._pending.get(key)
            if future is None:
                future = self._pool.submit(self._fetch, rt)
                self._pending[key] = future
        try:
            result = future.result(timeout=SERVER_DEADLINE_S)
        except FutureTimeout:
            return (cached[1] if cached else None), (
                f"Pub/Sub did not answer within {SERVER_DEADLINE_S:.0f} s"
            )
        except Exception as exc:
            with self._lock:
                self._pending.pop(key, None)
            return (cached[1] if cached else None), redact(f"{type(exc).__name__}: {exc}")[:300]
        with self._lock:
            self._pending.pop(key, None)
            self._cache[key] = (time.monotonic(), result)
        return result, None


SERVER = _ServerState()


# -- health -------------------------------------------------------------------------------
def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return round(max(0.0, (later - earlier).total_seconds()), 3)


def open_failures(rt: Runtime) -> dict[str, int]:
    """Open entries of the failure log per subscription."""
    ensure_tables(rt.sql)
    return {
        str(k): v for k, v in count_by(rt.sql, FAILURES, "subscription", {"status": "open"}).items()
    }


def _failure_log(size: retention.LogSize | None, declared: Subscription | None) -> dict[str, Any]:
    """A subscription's failure log: entries per status, when the oldest was first seen,
    and the declared retention in days (0: forever; None when not declared)."""
    return {
        "entries": size.entries if size else 0,
        "open": size.open if size else 0,
        "replayed": size.replayed if size else 0,
        "oldest_at": size.oldest_at.isoformat() if size and size.oldest_at else None,
        "retention_days": {
            status: retention.retention_days(declared, status) for status in retention.STATUSES
        }
        if declared
        else None,
    }


def health(rt: Runtime) -> dict[str, Any]:
    """Every declared subscription (and undeclared ones the server has): state and counts.

    ``failure_log_size`` is the number of open entries (what a replay would take);
    ``failure_log`` has the whole log's size, its oldest entry and the retention.
    """
    counts: dict[str, counters.Counts] = {}
    sizes: dict[str, retention.LogSize] = {}
    counts_error = None
    try:
        ensure_tables(rt.sql)
        counts = counters.read_all(rt.sql)
        sizes = retention.log_sizes(rt.sql)
    except (StoreUnavailable, pyodbc.Error) as exc:  # the server side is still worth showing
        counts_error = redact(f"{type(exc).__name__}: {exc}")[:300]
    server, server_error = SERVER.get(rt)
    now = now_utc()
    names = list(rt.cfg.subscriptions) + sorted(
        n for n in (server or {}) if n not in rt.cfg.subscriptions
    )
    rows = []
    for name in names:
        declared = rt.cfg.subscriptions.get(name)
        remote = (server or {}).get(name)
        c = counts.get(name)
        if remote is None:
            state = "unknown" if server is None else "missing"
        elif not remote["exists"]:
            state = "missing"
        elif not remote["declared"]:
            state = "undeclared"
        elif remote["drift"]:
            state = "drift"
        else:
            state = "ok"
        rows.append(
            {
                "name": name,
                "entity": declared.entity if declared else None,
                "topic": declared.topic if declared else (remote or {}).get("topic"),
                "sink": declared.sink if declared else None,
                "status": state,
                "exists": remote["exists"] if remote else None,
                "drift": remote["drift"] if remote else [],
                "backlog": remote["backlog"] if remote else None,
                "processed": c.processed if c else 0,
                "applied": c.applied if c else 0,
                "stale": c.stale if c else 0,
                "failed": c.failed if c else 0,
                "failure_log_size": sizes[name].open if name in sizes else 0,
                "failure_log": _failure_log(sizes.get(name), declared),
                "last_event_at": c.last_event_at.isoformat() if c and c.last_event_at else None,
                "last_batch_at": c.last_batch_at.isoformat() if c and c.last_batch_at else None,
                "lag_s": _seconds(c.last_batch_at, c.last_event_at) if c else None,
                "idle_s": _seconds(now, c.last_batch_at) if c else None,
            }
        )
    return {"server_error": server_error, "counts_error": counts_error, "subscriptions": rows}


# -- the failure log ------------------------------------------------------------------------
def _failure_json(f: failures.Failure, *, full: bool) -> dict[str, Any]:
    text = f.text
    return {
        "subscription": f.subscription,
        "message_id": f.message_id,
        "entity": f.entity,
        "data": text if full else text[:500],
        "data_truncated": not full and len(text) > 500,
        "attributes": f.attributes,
        "ordering_key": f.ordering_key,
        "error": f.error,
        "attempts": f.attempts,
        "first_seen": f.first_seen.isoformat(),
        "last_seen": f.last_seen.isoformat(),
        "status": f.status,
        "resolved_at": f.resolved_at.isoformat() if f.resolved_at else None,
        "resolution": f.resolution,
    }


def failures_of(
    rt: Runtime, name: str, *, status: str = "open", limit: int = 100
) -> dict[str, Any]:
    """A subscription's failure-log entries, newest first (``status``: open|replayed|all)."""
    sub = rt.cfg.subscription(name)
    ensure_tables(rt.sql)
    wanted: Any = None if status == "all" else status
    found = failures.list_failures(rt.sql, subscription=sub.name, status=wanted, limit=limit)
    return {
        "subscription": sub.name,
        "open": open_failures(rt).get(sub.name, 0),
        "failures": [_failure_json(f, full=False) for f in found],
    }


def failure(rt: Runtime, name: str, message_id: str) -> dict[str, Any]:
    sub = rt.cfg.subscription(name)
    ensure_tables(rt.sql)
    try:
        found = failures.get(rt.sql, message_id, sub.name)
    except failures.FailureNotFound as exc:
        raise LookupError(str(exc)) from None
    return _failure_json(found, full=True)


def replay(rt: Runtime, name: str, ids: list[str] | None, *, actor: str) -> dict[str, Any]:
    """Replay the given failures (or every open one) of a subscription, each audited."""
    sub = rt.cfg.subscription(name)
    ensure_tables(rt.sql)
    if ids is None:
        targets = failures.list_failures(
            rt.sql, subscription=sub.name, status="open", limit=MAX_REPLAY
        )
    else:
        try:
            targets = [failures.get(rt.sql, m, sub.name) for m in dict.fromkeys(ids)]
        except failures.FailureNotFound as exc:
            raise LookupError(str(exc)) from None
    outcomes = [failures.replay(rt, f, actor=actor) for f in targets]
    tally: dict[str, int] = {}
    for o in outcomes:
        tally[o.result] = tally.get(o.result, 0) + 1
    return {
        "subscription": sub.name,
        "tally": tally,
        "summary": ", ".join(f"{n} {k}" for k, n in sorted(tally.items())) or "nothing to replay",
        "outcomes": [
            {"message_id": o.message_id, "result": o.result, "detail": o.detail} for o in outcomes
        ],
        "open": open_failures(rt).get(sub.name, 0),
    }
