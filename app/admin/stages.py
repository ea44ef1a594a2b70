"""Read stages through :class:`flags.service.FlagService`: the same gate as the CLI.

Nothing here decides whether a move is allowed: ``set_stage`` calls the service,
which consults the gate (backfill complete, latest verification clean and recent) and
raises :class:`flags.gate.GateRefused` with the reason; the route answers 409 with it.
The admin API never forces a move: overriding the gate stays a deliberate CLI act
(``cutover flags set ... --force``), recorded in the audit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cutover.runtime import Runtime
from flags.audit import Change
from flags.service import EntityStatus, FlagService


@contextmanager
def flag_service(rt: Runtime) -> Iterator[FlagService]:
    """A service over the runtime's stores and the configured flag backend, closed after."""
    service = FlagService(rt)
    try:
        yield service
    finally:
        service.close()


def change_json(change: Change | None) -> dict[str, Any] | None:
    return change.to_json() if change is not None else None


def status_json(status: EntityStatus) -> dict[str, Any]:
    return {
        "entity": status.entity,
        "backend": status.where,
        "warnings": status.warnings,
        "clients": [
            {
                "client": c.client_id,
                "stage": c.stage.value,
                "changed_outside": c.changed_outside,
                "last_change": change_json(c.last),
            }
            for c in status.clients
        ],
    }


def stages(rt: Runtime, entity: str) -> dict[str, Any]:
    with flag_service(rt) as service:
        return status_json(service.status(entity))


def flags_only(rt: Runtime, entity: str) -> dict[str, Any]:
    """Stages straight from the flag backend, needing no store: the fallback of
    :func:`stages` while a store is down. Only clients a flag lists are named; every
    other client is at ``old`` (``default_stage``), which is what the readers serve."""
    name = rt.cfg.entity(entity).name
    with flag_service(rt) as service:
        flags = service.backend.read(name)
        where = service.backend.where()
    return {
        "entity": name,
        "backend": where,
        "warnings": flags.warnings(),
        "clients": [
            {
                "client": c,
                "stage": flags.stage_of(c).value,
                "changed_outside": False,
                "last_change": None,
            }
            for c in sorted(flags.listed_clients())
        ],
        "default_stage": "old",
    }


def set_stage(
    rt: Runtime, entity: str, client: str, stage: str, *, actor: str, reason: str | None
) -> dict[str, Any]:
    """Move one client (gate applies to ``new``); ``changed`` is False when already there."""
    with flag_service(rt) as service:
        change = service.set_stage(entity, client, stage, actor=actor, reason=reason)
    return {
        "changed": change is not None,
        "change": change_json(change),
        "entity": entity,
        "client": client,
        "stage": stage,
    }


def rollback(
    rt: Runtime, entity: str, client: str, *, actor: str, reason: str | None
) -> dict[str, Any]:
    with flag_service(rt) as service:
        change = service.rollback(entity, client, actor=actor, reason=reason)
    return {
        "changed": change is not None,
        "change": change_json(change),
        "entity": entity,
        "client": client,
        "stage": "old",
    }


def kill(rt: Runtime, entity: str, *, actor: str, reason: str | None) -> dict[str, Any]:
    with flag_service(rt) as service:
        changes = service.kill(entity, actor=actor, reason=reason)
    return {
        "entity": entity,
        "clients": [c.client_id for c in changes],
        "changes": [c.to_json() for c in changes],
    }


def audit_history(rt: Runtime, entity: str, client: str | None = None) -> list[Change]:
    """Every audited stage change of an entity (parked records flushed first)."""
    with flag_service(rt) as service:
        name = rt.cfg.entity(entity).name
        service.ensure_schema()
        service.audit.flush_pending()
        return service.audit.history(name, client)
