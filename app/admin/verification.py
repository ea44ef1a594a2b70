"""The latest verification per client, and one client's verification history.

The latest result of each client is the backfill ledger's (``backfill.ledger.entries``:
when, full or sample, clean or how many differences); the history, with the
differences by kind, is the ``backfill_verifications`` table the verifier writes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from backfill import ledger
from backfill.tables import VERIFICATIONS
from stores.runtime import Runtime

from ._sql import select_rows


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def latest_of(entry: ledger.LedgerEntry | None) -> dict[str, Any] | None:
    """A ledger entry's latest verification, or None when the client was never verified."""
    if entry is None or entry.verified_at is None or entry.last_verification_clean is None:
        return None
    return {
        "at": _iso(entry.verified_at),
        "mode": entry.last_verification_mode,
        "clean": bool(entry.last_verification_clean),
        "differences": entry.differences or 0,
        "rows_checked": entry.rows_checked,
        "last_clean_at": _iso(entry.last_clean_at),
    }


def latest(rt: Runtime, entity: str) -> list[dict[str, Any]]:
    """Every client the ledger knows: its backfill state and latest verification."""
    name = rt.cfg.entity(entity).name
    return [
        {
            "client": e.client,
            "backfill_state": e.state,
            "verification": latest_of(e),
        }
        for e in ledger.entries(rt.sql, name)
    ]


def history(rt: Runtime, entity: str, client: str, limit: int = 50) -> list[dict[str, Any]]:
    """One client's verifications, newest first, with differences by kind."""
    name = rt.cfg.entity(entity).name
    ledger.ensure_tables(rt.sql)
    rows = select_rows(
        rt.sql,
        VERIFICATIONS,
        {"entity": name, "client": client},
        order_by=("finished_at",),
        descending=True,
        limit=limit,
    )
    return [
        {
            "verification_id": row["verification_id"],
            "mode": row["mode"],
            "started_at": _iso(row["started_at"]),
            "finished_at": _iso(row["finished_at"]),
            "rows_checked": row["rows_checked"],
            "differences": row["differences"],
            "clean": row["clean"],
            "by_kind": row["by_kind"] or {},
            "report_path": row["report_path"],
        }
        for row in rows
    ]
