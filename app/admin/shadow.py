"""Dark-read (shadow) evidence per client, and the recorded mismatches.

Both come from the SQL store, so every API process's comparisons count, across
restarts: the evidence (comparisons, mismatches, errors per client, summed over the
gate's window ``CUTOVER_GATE_SHADOW_WINDOW_S``) from :mod:`flags.evidence`, judged by
the same policy the gate applies; the mismatch records (one per differing item) from
``cutover_shadow_mismatches``, written by :mod:`app.shadow`. Counts reach the store
within ``CUTOVER_SHADOW_EVIDENCE_FLUSH_S`` of the comparison.
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, replace
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from app.shadow import MismatchRecorder
from core.clock import now_utc
from flags import evidence
from flags.evidence import ClientEvidence, Counts, ShadowPolicy
from flags.tables import MISMATCHES
from stores.runtime import Runtime
from stores.sql import SqlStore

from ._sql import count_by

SCOPE = "every API process, kept in the SQL store"


class Policy(BaseModel):
    """What the gate for ``new`` asks of each client (the settings)."""

    min_comparisons: int
    max_mismatch_rate: float
    window_s: int


class Totals(BaseModel):
    comparisons: int = Field(description="Comparisons that ran (errors excluded).")
    mismatches: int = Field(description="Comparisons with a difference after the re-check.")
    mismatched_items: int = Field(description="Items that differed, over those comparisons.")
    errors: int = Field(description="Comparisons that could not run (a store failed).")
    rate: float | None = Field(description="mismatches / comparisons; null before any.")


class ClientShadow(Totals):
    client: str
    ok: bool = Field(description="Whether this evidence passes the gate's policy.")
    reason: str


class MismatchRecord(BaseModel):
    id: str
    entity: str
    client_id: str
    item_key: str
    kind: str
    fields: list[str] | None
    old_version: int | None
    new_version: int | None
    stage: str
    detected_at: datetime


class ShadowReport(BaseModel):
    """One entity's shadow evidence over the window, per client, and recent mismatches."""

    entity: str
    scope: str = SCOPE
    window_s: int
    since: datetime = Field(description="Start of the first bucket counted.")
    policy: Policy
    totals: Totals
    clients_total: int = Field(description="Clients with evidence (or the one asked for).")
    clients_blocked: int = Field(description="Of those, clients the policy would refuse.")
    clients: list[ClientShadow] = Field(
        description="Blocked clients first, then by id; at most client_limit."
    )
    per_client: dict[str, int] = Field(description="Mismatch records per client, same window.")
    recent: list[MismatchRecord]


def policy(rt: Runtime, window_s: int | None = None) -> ShadowPolicy:
    base = ShadowPolicy.from_settings(rt.settings)
    return base if window_s is None else replace(base, window_s=window_s)


def client_json(found: ClientEvidence) -> dict[str, Any]:
    """One client's evidence as the API and console show it."""
    return ClientShadow(
        client=found.client_id,
        comparisons=found.comparisons,
        mismatches=found.mismatches,
        mismatched_items=found.mismatched_items,
        errors=found.errors,
        rate=found.rate,
        ok=found.ok,
        reason=found.reason,
    ).model_dump()


def evidence_by_client(rt: Runtime, entity: str) -> dict[str, dict[str, Any]]:
    """Every client with evidence in the window, judged (one query)."""
    name = rt.cfg.entity(entity).name
    found = evidence.evidence_of_all(rt.sql, name, policy=policy(rt))
    return {client: client_json(e) for client, e in found.items()}


def no_evidence(rt: Runtime, entity: str, client: str) -> dict[str, Any]:
    """A client with no comparisons in the window, judged (no query)."""
    rules = policy(rt)
    since = rules.since(now_utc())
    return client_json(evidence.judge(entity, client, Counts(), rules, since=since))


def _totals(counts: Counts) -> Totals:
    return Totals(
        comparisons=counts.comparisons,
        mismatches=counts.mismatches,
        mismatched_items=counts.mismatched_items,
        errors=counts.errors,
        rate=counts.rate,
    )


def entity_rate(rt: Runtime, entity: str) -> dict[str, Any]:
    """The entity's comparisons and mismatch rate over the window, every client."""
    rules = policy(rt)
    counts = evidence.totals(rt.sql, rt.cfg.entity(entity).name, since=rules.since(now_utc()))
    return {
        "comparisons": counts.comparisons,
        "mismatched_comparisons": counts.mismatches,
        "errors": counts.errors,
        "rate": counts.rate,
        "window_s": rules.window_s,
        "scope": f"{SCOPE}, last {evidence.span(rules.window_s)}",
    }


_READY: weakref.WeakSet[SqlStore] = weakref.WeakSet()


def _ensure_table(rt: Runtime) -> None:
    """Create the mismatch table once per store object (the console polls)."""
    if rt.sql not in _READY:
        rt.sql.ensure_schema([MISMATCHES])
        _READY.add(rt.sql)


def mismatch_counts(rt: Runtime, entity: str, *, since: datetime | None = None) -> dict[str, int]:
    """Recorded mismatches per client of an entity since ``since`` (default: the window)."""
    name = rt.cfg.entity(entity).name
    _ensure_table(rt)
    start = since or policy(rt).since(now_utc())
    counts = count_by(
        rt.sql, MISMATCHES, "client_id", {"entity": name}, since=("detected_at", start)
    )
    return {str(k): v for k, v in counts.items()}


def recent(
    rt: Runtime, entity: str, client: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """The latest mismatch records, newest first (``MismatchRecorder.recent``)."""
    name = rt.cfg.entity(entity).name
    out = []
    for m in MismatchRecorder(rt.sql).recent(name, client, limit):
        record = asdict(m)
        record["detected_at"] = m.detected_at.isoformat()
        out.append(record)
    return out


def report(
    rt: Runtime,
    entity: str,
    *,
    client: str | None = None,
    limit: int = 50,
    client_limit: int = 1000,
    window_s: int | None = None,
) -> ShadowReport:
    """Everything ``GET /admin/shadow/{entity}`` answers: three grouped queries (per
    client, the entity's totals, mismatch records per client) and the recent records,
    whatever the number of clients."""
    name = rt.cfg.entity(entity).name
    rules = policy(rt, window_s)
    now = now_utc()
    since = rules.since(now)
    if client is None:
        judged = evidence.evidence_of_all(rt.sql, name, policy=rules, now=now)
    else:
        judged = evidence.shadow_verdict(rt.sql, name, [client], policy=rules, now=now)
    order = sorted(judged.values(), key=lambda e: (e.ok, e.client_id))
    return ShadowReport(
        entity=name,
        window_s=rules.window_s,
        since=since,
        policy=Policy(
            min_comparisons=rules.min_comparisons,
            max_mismatch_rate=rules.max_mismatch_rate,
            window_s=rules.window_s,
        ),
        totals=_totals(evidence.totals(rt.sql, name, since=since)),
        clients_total=len(order),
        clients_blocked=sum(not e.ok for e in order),
        clients=[ClientShadow(**client_json(e)) for e in order[:client_limit]],
        per_client=mismatch_counts(rt, name, since=since),
        recent=[MismatchRecord(**r) for r in recent(rt, name, client, limit)],
    )
