"""The audit log of subscription changes: who did what, when, with which details.

Every ``add``, ``sync``, ``drop`` (and refused drop) and failure ``replay`` writes one
row to ``subs_audit`` in the SQL store, so the migration's history outlives terminals.
"""

from __future__ import annotations

import getpass
import os
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.clock import now_utc
from stores.sql import SqlStore, bookkeeping

from .tables import AUDIT


@dataclass(frozen=True)
class AuditEntry:
    id: str
    at: datetime
    actor: str
    action: str
    subscription: str
    details: dict[str, Any]


def default_actor() -> str:
    """The OS user running the command (``--actor`` overrides it)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return os.environ.get("USER", f"uid-{os.getuid()}")


def write(
    store: SqlStore, action: str, subscription: str, details: dict[str, Any], actor: str | None
) -> AuditEntry:
    entry = AuditEntry(
        uuid.uuid4().hex, now_utc(), actor or default_actor(), action, subscription, details
    )
    with store.transaction() as cur:
        cur.execute(*bookkeeping.insert_sql(store.dialect, AUDIT, entry.__dict__))
    return entry


def read(store: SqlStore, subscription: str | None = None, limit: int = 100) -> list[AuditEntry]:
    """The newest entries first, for one subscription or all."""
    d, q = store.dialect, store.dialect.quote
    sql, params = bookkeeping.select_sql(d, AUDIT), []
    if subscription is not None:
        sql += f" WHERE {q('subscription')} = ?"
        params.append(subscription)
    with store.transaction() as cur:
        cur.execute(d.limit(f"{sql} ORDER BY {q('at')} DESC", limit), params)
        return [AuditEntry(**bookkeeping.record(d, AUDIT, r)) for r in cur.fetchall()]
