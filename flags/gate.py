"""The cutover gate: a client moves to ``new`` only with a complete, verified backfill.

The gate reads the backfill ledger (``backfill.ledger.client_status``) through a small
protocol, so it works before that module exists: without it every client is "not
verified" and ``set ... new`` is refused (``--force`` overrides, and is audited).
Each refusal names the one condition that failed and what to run next. A client the
ledger allows must also pass its shadow evidence (:mod:`flags.evidence`) when a
:class:`~flags.evidence.ShadowPolicy` is given. A bulk move
(a cohort step) is checked client by client with :meth:`Gate.check_many`, which reads
the whole ledger of the entity once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from stores.sql import SqlStore

from .evidence import ShadowPolicy, shadow_verdict


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
#: Every entry of an entity at once, by client id.
LedgerBulkReader = Callable[[SqlStore, str], Mapping[str, LedgerEntry]]


def default_ledger_reader() -> LedgerReader:
    """The backfill area's ledger: the gate trusts only what the backfill recorded."""
    from backfill.ledger import client_status

    return client_status


def ledger_by_client(store: SqlStore, entity: str) -> dict[str, LedgerEntry]:
    """The backfill ledger of one entity, by client id, in one read."""
    from backfill.ledger import entries

    return {e.client: e for e in entries(store, entity)}


class GateRefused(RuntimeError):
    """``set ... new`` was refused; the message says which condition failed."""


class BulkGateRefused(GateRefused):
    """A cohort step was refused: some clients it would switch to ``new`` fail the gate.

    ``blocked`` holds every one of them with its reason (in id order); ``path`` the
    file they were all written to.
    """

    def __init__(self, message: str, blocked: list[tuple[str, str]], path: object) -> None:
        super().__init__(message)
        self.blocked = blocked
        self.path = path


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
    """The gate over one SQL store, with the ledger reader found at construction.

    A per-client ``reader`` given alone is used for bulk checks too (one read per
    client); otherwise bulk checks read the entity's ledger once.
    """

    def __init__(
        self,
        store: SqlStore,
        max_age_s: int,
        reader: LedgerReader | None = None,
        bulk_reader: LedgerBulkReader | None = None,
        shadow: ShadowPolicy | None = None,
    ) -> None:
        self._store = store
        self._max_age_s = max_age_s
        self._reader = reader or default_ledger_reader()
        self._bulk = bulk_reader or (None if reader else ledger_by_client)
        self._shadow = shadow

    def _decide(
        self, entry: LedgerEntry | None, entity: str, client_id: str, now: datetime
    ) -> GateDecision:
        return decide(entry, entity=entity, client_id=client_id, now=now, max_age_s=self._max_age_s)

    def check(self, entity: str, client_id: str, now: datetime) -> GateDecision:
        entry = self._reader(self._store, entity, client_id)
        decisions = {client_id: self._decide(entry, entity, client_id, now)}
        return self._with_shadow(entity, decisions, now)[client_id]

    def check_many(
        self, entity: str, clients: Iterable[str], now: datetime
    ) -> dict[str, GateDecision]:
        """Each client's decision, exactly as :meth:`check` would give it.

        The ledger and the shadow evidence are each read once for all clients."""
        ids = list(clients)
        if self._bulk is None:
            decisions = {
                c: self._decide(self._reader(self._store, entity, c), entity, c, now) for c in ids
            }
        else:
            ledger = self._bulk(self._store, entity)
            decisions = {c: self._decide(ledger.get(c), entity, c, now) for c in ids}
        return self._with_shadow(entity, decisions, now)

    def _with_shadow(
        self, entity: str, decisions: dict[str, GateDecision], now: datetime
    ) -> dict[str, GateDecision]:
        """The ledger's decisions, with the shadow evidence asked of those it allows."""
        allowed = [c for c, d in decisions.items() if d.allowed]
        if self._shadow is None or not allowed:
            return decisions
        found = shadow_verdict(self._store, entity, allowed, policy=self._shadow, now=now)
        out = dict(decisions)
        for c in allowed:
            evidence = found[c]
            reason = f"{decisions[c].reason}; {evidence.reason}" if evidence.ok else evidence.reason
            out[c] = GateDecision(evidence.ok, reason)
        return out
