"""The cutover gate: a client moves to ``new`` only with a complete, verified backfill.

The gate reads the backfill ledger (``backfill.ledger.client_status``) through a small
protocol, so it works before that module exists: without it every client is "not
verified" and ``set ... new`` is refused (``--force`` overrides, and is audited).
Each refusal names the one condition that failed and what to run next.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from stores.sql import SqlStore


class LedgerEntry(Protocol):
    """What the gate needs from one client's backfill ledger entry."""

    @property
    def state(self) -> str: ...  # 'not_started' | 'copying' | 'copied' | 'verified'
    @property
    def rows_copied(self) -> int: ...
    @property
    def copied_at(self) -> datetime | None: ...
    @property
    def verified_at(self) -> datetime | None: ...
    @property
    def last_verification_clean(self) -> bool | None: ...
    @property
    def differences(self) -> int | None: ...


LedgerReader = Callable[[SqlStore, str, str], LedgerEntry | None]


def default_ledger_reader() -> LedgerReader:
    """The backfill area's ledger: the gate trusts only what the backfill recorded."""
    from backfill.ledger import client_status

    return client_status


class GateRefused(RuntimeError):
    """``set ... new`` was refused; the message says which condition failed."""


@dataclass(frozen=True)
class GateDecision:
    allowed: bool
    reason: str


def _age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def decide(
    entry: LedgerEntry | None,
    *,
    entity: str,
    client_id: str,
    now: datetime,
    max_age_s: int,
) -> GateDecision:
    """Whether ``client_id`` may read ``entity`` from the SQL store, and why (not)."""
    who = f"{client_id!r} ({entity})"
    verify = f"cutover verify {entity} --client {client_id}"
    if entry is None or entry.state == "not_started":
        return GateDecision(
            False,
            f"backfill not started for {who}: run `cutover backfill run {entity} "
            f"--client {client_id}`, then `{verify}`",
        )
    if entry.state not in ("copied", "verified"):
        return GateDecision(
            False,
            f"backfill not complete for {who}: state {entry.state}, "
            f"{entry.rows_copied} rows copied so far",
        )
    if entry.verified_at is None or entry.last_verification_clean is None:
        return GateDecision(False, f"backfill of {who} was never verified: run `{verify}`")
    if not entry.last_verification_clean:
        found = "" if entry.differences is None else f" found {entry.differences} differences"
        return GateDecision(
            False,
            f"latest verification of {who} (at {entry.verified_at:%Y-%m-%d %H:%M}Z)"
            f"{found}: not clean",
        )
    if entry.copied_at is not None and entry.copied_at > entry.verified_at:
        return GateDecision(
            False, f"{who} was copied again after its last verification: run `{verify}`"
        )
    age = now - entry.verified_at
    if age > timedelta(seconds=max_age_s):
        return GateDecision(
            False,
            f"latest clean verification of {who} is too old: {_age(age)} "
            f"(limit {_age(timedelta(seconds=max_age_s))}): run `{verify}`",
        )
    return GateDecision(True, f"verified clean {_age(age)} ago")


class Gate:
    """The gate over one SQL store, with the ledger reader found at construction."""

    def __init__(self, store: SqlStore, max_age_s: int, reader: LedgerReader | None = None) -> None:
        self._store = store
        self._max_age_s = max_age_s
        self._reader = reader or default_ledger_reader()

    def check(self, entity: str, client_id: str, now: datetime) -> GateDecision:
        entry = self._reader(self._store, entity, client_id)
        return decide(entry, entity=entity, client_id=client_id, now=now, max_age_s=self._max_age_s)
