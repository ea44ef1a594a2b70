"""What the console shows on one screen, assembled from every area's records.

Per entity, every client with its read stage, backfill state, latest verification,
recorded shadow mismatches and shadow evidence (comparisons, mismatches, rate, and the
gate's verdict on them); the entity's backfill progress and shadow mismatch rate;
subscription health; the audit log. Each part is read on its own: a store that is
down blanks the parts that need it and names the reason in ``errors`` instead of
failing the whole page, so the console stays useful during an incident (which is when
it is needed most, e.g. for a rollback that needs no store at all).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from backfill.ledger import LedgerEntry
from core.clock import now_utc
from core.redaction import redact
from stores.runtime import Runtime

from . import audit, backfill, shadow, stages, subscriptions, verification

log = logging.getLogger(__name__)
T = TypeVar("T")


def attempt(errors: dict[str, str], part: str, read: Callable[[], T], default: T) -> T:
    """``read()``, or ``default`` with the reason kept in ``errors[part]``."""
    try:
        return read()
    except Exception as exc:
        log.warning("console: %s unavailable: %s", part, redact(str(exc)))
        errors[part] = f"{type(exc).__name__}: {redact(str(exc))}"
        return default


def entity_overview(rt: Runtime, entity: str) -> dict[str, Any]:
    """Every client of one entity, with everything the gate and the operator look at."""
    errors: dict[str, str] = {}
    flags: dict[str, Any] | None = attempt(
        errors, "stages", lambda: stages.stages(rt, entity), None
    )
    if flags is None:  # a store is down: the flag backend alone still gives every stage
        flags = attempt(errors, "flag backend", lambda: stages.flags_only(rt, entity), None)
    no_ledger: dict[str, LedgerEntry] = {}
    ledger = attempt(
        errors, "backfill ledger", lambda: backfill.ledger_by_client(rt, entity), no_ledger
    )
    progress: dict[str, Any] | None = attempt(
        errors, "backfill runs", lambda: backfill.entity_backfill(rt, entity), None
    )
    no_counts: dict[str, int] = {}
    mismatches = attempt(
        errors, "shadow mismatches", lambda: shadow.mismatch_counts(rt, entity), no_counts
    )
    no_evidence: dict[str, dict[str, Any]] = {}
    evidence = attempt(
        errors, "shadow evidence", lambda: shadow.evidence_by_client(rt, entity), no_evidence
    )
    by_client: dict[str, dict[str, Any]] = {}
    for row in (flags or {}).get("clients", []):
        by_client[row["client"]] = {**row}
    default_stage = (flags or {}).get("default_stage")
    for client in set(ledger) | set(mismatches) | set(evidence):
        by_client.setdefault(
            client,
            {
                "client": client,
                "stage": default_stage,
                "changed_outside": False,
                "last_change": None,
            },
        )
    clients = []
    for client in sorted(by_client):
        entry = ledger.get(client)
        clients.append(
            {
                **by_client[client],
                "backfill": {
                    "state": entry.state if entry else "not_started",
                    "rows_copied": entry.rows_copied if entry else 0,
                    "rows_source": entry.rows_source if entry else None,
                    "copied_at": entry.copied_at.isoformat() if entry and entry.copied_at else None,
                },
                "verification": verification.latest_of(entry),
                "shadow_mismatches": mismatches.get(client, 0),
                "shadow_evidence": evidence.get(client) or shadow.no_evidence(rt, entity, client),
            }
        )
    runs = (progress or {}).get("runs", [])
    no_rate: dict[str, Any] = {}
    return {
        "entity": entity,
        "flags_backend": (flags or {}).get("backend"),
        "warnings": (flags or {}).get("warnings", []),
        "clients": clients,
        "backfill": {
            "paused": (progress or {}).get("paused"),
            "latest_run": runs[0] if runs else None,
            "runs": len(runs),
        },
        "shadow": attempt(errors, "shadow rate", lambda: shadow.entity_rate(rt, entity), no_rate),
        "errors": errors,
    }


def overview(rt: Runtime, *, audit_limit: int = 50) -> dict[str, Any]:
    errors: dict[str, str] = {}
    no_subs: dict[str, Any] = {}
    subs = attempt(errors, "subscriptions", lambda: subscriptions.health(rt), no_subs)
    no_rows: list[dict[str, Any]] = []
    log_rows = attempt(errors, "audit", lambda: audit.entries(rt, limit=audit_limit), no_rows)
    return {
        "generated_at": now_utc().isoformat(),
        "entities": [entity_overview(rt, name) for name in rt.cfg.entities],
        "subscriptions": subs,
        "audit": log_rows,
        "errors": errors,
    }
