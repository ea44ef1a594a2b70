"""The per-client migration ledger: where each client of each entity stands.

States, in order: ``not_started`` -> ``copying`` -> ``copied`` -> ``verified``. A
clean *full* verification moves a copied client to ``verified``; a verification that
finds differences moves a verified client back to ``copied``. Row counts are added in
the same transaction as the rows they count, so they survive crashes exactly.

Other areas read it through :func:`client_status` (the cutover gate: backfill
complete, latest verification clean and recent) and :func:`entries`.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.clock import now_utc
from stores.sql import Dialect, SqlStore, bookkeeping

from .tables import LEDGER, TABLES

NOT_STARTED, COPYING, COPIED, VERIFIED = "not_started", "copying", "copied", "verified"
STATES = (NOT_STARTED, COPYING, COPIED, VERIFIED)


@dataclass(frozen=True)
class LedgerEntry:
    """One client of one entity.

    ``verified_at`` is when the LATEST verification finished, whatever its result;
    ``last_verification_clean`` is that result (``None``: never verified) and
    ``differences`` how many differing keys it reported. ``last_clean_at`` is the
    last time a verification was clean. ``state == "verified"`` means the backfill
    finished and the latest FULL verification was clean.
    """

    entity: str
    client: str
    state: str
    rows_copied: int
    rows_source: int | None
    run_id: str | None
    copy_started_at: datetime | None
    copied_at: datetime | None
    copy_seconds: float | None
    verified_at: datetime | None
    last_verification_clean: bool | None
    last_verification_mode: str | None
    differences: int | None
    rows_checked: int | None
    last_clean_at: datetime | None
    updated_at: datetime | None

    @property
    def copy_complete(self) -> bool:
        return self.state in (COPIED, VERIFIED)

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> LedgerEntry:
        return cls(
            entity=rec["entity"],
            client=rec["client"],
            state=rec["state"],
            rows_copied=int(rec["rows_copied"] or 0),
            rows_source=rec["rows_source"],
            run_id=rec["run_id"],
            copy_started_at=rec["copy_started_at"],
            copied_at=rec["copied_at"],
            copy_seconds=rec["copy_seconds"],
            verified_at=rec["verified_at"],
            last_verification_clean=rec["last_verification_clean"],
            last_verification_mode=rec["last_verification_mode"],
            differences=rec["differences"],
            rows_checked=rec["rows_checked"],
            last_clean_at=rec["last_clean_at"],
            updated_at=rec["updated_at"],
        )


# -- the read API -----------------------------------------------------------------------
_READY: weakref.WeakSet[SqlStore] = weakref.WeakSet()


def ensure_tables(sql_store: SqlStore) -> None:
    """Create the backfill's tables once per store object (cheap on later calls)."""
    if sql_store not in _READY:
        sql_store.ensure_schema(TABLES)
        _READY.add(sql_store)


def client_status(sql_store: SqlStore, entity_name: str, client_id: str) -> LedgerEntry | None:
    """The ledger entry of one client, or ``None`` when the backfill never saw it."""
    ensure_tables(sql_store)
    with sql_store.transaction() as cur:
        recs = bookkeeping.select(
            cur, sql_store.dialect, LEDGER, {"entity": entity_name, "client": client_id}
        )
    return LedgerEntry.from_record(recs[0]) if recs else None


def entries(sql_store: SqlStore, entity_name: str) -> list[LedgerEntry]:
    """Every client of an entity the ledger knows, by client id."""
    ensure_tables(sql_store)
    with sql_store.transaction() as cur:
        recs = bookkeeping.select(
            cur, sql_store.dialect, LEDGER, {"entity": entity_name}, order_by=("client",)
        )
    return [LedgerEntry.from_record(r) for r in recs]


# -- writes (inside the caller's transaction) ------------------------------------------------
def start_copy(
    cur: Any,
    d: Dialect,
    entity: str,
    client: str,
    run_id: str,
    est_rows: int | None,
    now: datetime,
) -> None:
    """A run starts copying a client: counts restart from zero for that run."""
    values = {
        "state": COPYING,
        "run_id": run_id,
        "rows_copied": 0,
        "rows_source": est_rows,
        "copy_started_at": now,
        "copied_at": None,
        "copy_seconds": None,
        "updated_at": now,
    }
    if not bookkeeping.update(cur, d, LEDGER, values, {"entity": entity, "client": client}):
        bookkeeping.insert(cur, d, LEDGER, {"entity": entity, "client": client, **values})


def add_rows(
    cur: Any, d: Dialect, entity: str, run_id: str, counts: Mapping[str, int], now: datetime
) -> None:
    """Count copied rows per client; a client first seen by this run starts copying."""
    for client in sorted(counts):  # one lock order for every writer: no deadlocks
        n = counts[client]
        where = {"entity": entity, "client": client}
        if bookkeeping.update(
            cur, d, LEDGER, {"updated_at": now}, {**where, "run_id": run_id}, add={"rows_copied": n}
        ):
            continue
        start_copy(cur, d, entity, client, run_id, None, now)
        bookkeeping.update(cur, d, LEDGER, {}, where, add={"rows_copied": n})


def mark_copied(
    cur: Any, d: Dialect, entity: str, run_id: str, now: datetime, client: str | None = None
) -> list[str]:
    """Clients of ``run_id`` still copying become copied (one client, or all); their ids."""
    where: dict[str, Any] = {"entity": entity, "run_id": run_id, "state": COPYING}
    if client is not None:
        where["client"] = client
    done = []
    for rec in bookkeeping.select(cur, d, LEDGER, where):
        started = rec["copy_started_at"]
        seconds = (now - started).total_seconds() if started else None
        bookkeeping.update(
            cur,
            d,
            LEDGER,
            {"state": COPIED, "copied_at": now, "copy_seconds": seconds, "updated_at": now},
            {"entity": entity, "client": rec["client"], "run_id": run_id, "state": COPYING},
        )
        done.append(rec["client"])
    return done


def record_verification(
    cur: Any,
    d: Dialect,
    entity: str,
    client: str,
    *,
    clean: bool,
    mode: str,
    differences: int,
    rows_checked: int,
    finished_at: datetime | None = None,
) -> None:
    """Store a verification's result; only a clean full one makes a client ``verified``."""
    now = finished_at or now_utc()
    where = {"entity": entity, "client": client}
    recs = bookkeeping.select(cur, d, LEDGER, where)
    state = recs[0]["state"] if recs else NOT_STARTED
    if clean and mode == "full" and state == COPIED:
        state = VERIFIED
    elif not clean and state == VERIFIED:
        state = COPIED
    values: dict[str, Any] = {
        "state": state,
        "verified_at": now,
        "last_verification_clean": clean,
        "last_verification_mode": mode,
        "differences": differences,
        "rows_checked": rows_checked,
        "updated_at": now,
    }
    if clean:
        values["last_clean_at"] = now
    if recs:
        bookkeeping.update(cur, d, LEDGER, values, where)
    else:
        bookkeeping.insert(cur, d, LEDGER, {**where, "rows_copied": 0, **values})
