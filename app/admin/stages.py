"""Read stages through :class:`flags.service.FlagService`: the same gate as the CLI.

Nothing here decides whether a move is allowed: ``set_stage``, ``hold`` and
``cohort`` call the service, which consults the gate (backfill complete, latest
verification clean and recent; for a cohort step, every known client it switches to
``new``) and raises :class:`flags.gate.GateRefused` with the reason; the route
answers 409 with it. The admin API never forces a move: overriding the gate stays a
deliberate CLI act (``cutover flags set|cohort ... --force``), recorded in the audit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flags.audit import Change
from flags.service import EntityStatus, FlagService
from flags.stages import FLAGGED
from stores.runtime import Runtime


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
    """The same document as ``cutover flags status --json``: rules, counts, clients."""
    return status.to_json()


def stages(rt: Runtime, entity: str) -> dict[str, Any]:
    with flag_service(rt) as service:
        return status_json(service.status(entity))


def flags_only(rt: Runtime, entity: str) -> dict[str, Any]:
    """Stages straight from the flag backend, needing no store: the fallback of
    :func:`stages` while a store is down. Only clients a list names are listed (their
    stage, and why); every other client is at ``default_stage`` when no cohort is
    set (``old``), and unknown here when one is (``None``: it depends on the client's
    bucket, which the rules give: ``rules``)."""
    name = rt.cfg.entity(entity).name
    with flag_service(rt) as service:
        flags = service.backend.read(name)
        where = service.backend.where()
    rules = flags.rules
    cohorts = any(rules.rule(s).percent for s in FLAGGED)
    return {
        "entity": name,
        "backend": where,
        "warnings": flags.warnings(),
        "rules": rules.to_json(),
        "clients": [
            {
                "client": c,
                "stage": flags.stage_of(c).value,
                "via": rules.via(c),
                "changed_outside": False,
                "last_change": None,
            }
            for c in sorted(flags.listed_clients())
        ],
        "default_stage": None if cohorts else "old",
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


def hold(
    rt: Runtime,
    entity: str,
    client: str,
    stage: str,
    *,
    release: bool,
    actor: str,
    reason: str | None,
) -> dict[str, Any]:
    """Hold one client at ``old``/``shadow`` whatever the cohorts do, or release it
    (the gate applies when a release switches it to ``new``)."""
    with flag_service(rt) as service:
        if release:
            change = service.release(entity, client, actor=actor, reason=reason)
        else:
            change = service.hold(entity, client, stage, actor=actor, reason=reason)
    return {
        "changed": change is not None,
        "change": change_json(change),
        "entity": entity,
        "client": client,
        "stage": change.to_stage if change else None,
    }


def cohort(
    rt: Runtime,
    entity: str,
    stage: str,
    percent: int,
    *,
    dry_run: bool,
    actor: str,
    reason: str | None,
) -> dict[str, Any]:
    """Set a cohort's percentage; refused (BulkGateRefused) when a known client it
    would switch to ``new`` fails the gate. Never forced here (CLI ``--force`` only)."""
    with flag_service(rt) as service:
        plan = service.set_cohort(
            entity, stage, percent, actor=actor, reason=reason, dry_run=dry_run
        )
    return plan.to_json()


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
