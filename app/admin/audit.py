"""One audit log for the console: every area's records, newest first, one shape.

Stage changes come from the flags audit (``flags.audit.AuditLog``: who moved which
client from where to where, why, forced or not, what the gate said); subscription
changes and failure replays from the subscribers audit (``subscribers.audit``). Each
entry: ``at``, ``area``, ``action``, ``entity``, ``subject``, ``actor``, ``detail``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from flags.audit import Change
from stores.runtime import Runtime
from subscribers import audit as subs_audit

from .stages import audit_history
from .subscriptions import ensure_tables


def _stage_entry(change: Change) -> dict[str, Any]:
    detail = change.reason or ""
    if change.forced:
        detail = f"{detail} [forced: {change.gate or ''}]".strip()
    elif change.gate:
        detail = f"{detail} (gate: {change.gate})".strip()
    return {
        "at": change.at.isoformat(),
        "area": "flags",
        "action": f"stage {change.from_stage} -> {change.to_stage}",
        "entity": change.entity,
        "subject": change.client_id,
        "actor": change.actor,
        "detail": detail,
        "id": change.id,
    }


def _subs_detail(details: dict[str, Any]) -> str:
    if "result" in details:  # a replay
        text = f"message {details.get('message_id')}: {details['result']}"
        return f"{text} ({details['detail']})" if details.get("detail") else text
    done = details.get("done")
    if isinstance(done, list) and done:
        return "; ".join(str(d) for d in done)
    return json.dumps(details, sort_keys=True, default=str)[:300]


def _subs_entries(rt: Runtime, entity: str | None, limit: int) -> list[dict[str, Any]]:
    ensure_tables(rt.sql)
    rows = []
    for e in subs_audit.read(rt.sql, limit=limit if entity is None else 10 * limit):
        declared = rt.cfg.subscriptions.get(e.subscription)
        sub_entity = declared.entity if declared else None
        if entity is not None and sub_entity != entity:
            continue
        rows.append(
            {
                "at": e.at.isoformat(),
                "area": "subscriptions",
                "action": e.action,
                "entity": sub_entity,
                "subject": e.subscription,
                "actor": e.actor,
                "detail": _subs_detail(e.details or {}),
                "id": e.id,
            }
        )
    return rows


def entries(rt: Runtime, *, entity: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The newest ``limit`` records of every area (or of one entity)."""
    name = rt.cfg.entity(entity).name if entity else None
    rows: list[dict[str, Any]] = []
    for each in [name] if name else list(rt.cfg.entities):
        rows += [_stage_entry(c) for c in audit_history(rt, each)]
    rows += _subs_entries(rt, name, limit)
    rows.sort(key=lambda e: datetime.fromisoformat(e["at"]), reverse=True)
    return rows[:limit]
