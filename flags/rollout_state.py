"""A rollout plan's state in the SQL store: the plan row, its lease and its events.

One row per entity (``cutover_rollout_plans``, :mod:`flags.tables`) says where the plan
is: its state, the current wave and phase and since when, the cohort percentages before
the wave (what a rollback restores) and those the plan last set (anything else was
changed outside it), the wave's baseline counts and its last guardrail figures.
``cutover_rollout_events`` keeps every transition with who and the figures.

**The lease.** Only the ``rollout run`` holding the row's lease (``owner`` with an
expiry, renewed every tick) acts. Taking it is one conditional UPDATE (free, or
expired), so of two runs exactly one wins; the other is told who holds it until when.
Every write a run makes for the plan is conditional on holding the lease *and* the plan
being ``running`` with the same ``plan_id``: once someone pauses, aborts or stops it
(``flags kill``), or its lease was taken over, the write matches no row and the run
stops before changing anything else.

States: ``planned`` (never run) and ``running`` are runnable (``running`` with no live
lease: its run died, ``rollout run`` resumes it); ``paused`` waits for ``rollout resume``
(a guardrail tripped, the gate refused a wave, the flag backend failed, or an
operator paused it); ``done``, ``aborted`` and ``stopped`` (the flags were changed
outside the plan: the kill switch, an edit in Unleash's UI) have ended.

The lease's times are the machine's clock (:func:`core.clock.now_utc`); the plan's
own times (phases, bake) come from the run's clock, which tests may replace.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from core.clock import now_utc
from stores.sql import SqlStore, bookkeeping

from .tables import ROLLOUT_EVENTS, ROLLOUT_PLANS

PLANNED, RUNNING, PAUSED, DONE, ABORTED, STOPPED = (
    "planned",
    "running",
    "paused",
    "done",
    "aborted",
    "stopped",
)
#: A plan in one of these has not ended: editing it is refused.
ACTIVE = (PLANNED, RUNNING, PAUSED)
RUNNABLE = (PLANNED, RUNNING)

PENDING, SHADOWING, BAKING, SWITCHING, WATCHING, ROLLING_BACK = (
    "pending",
    "shadowing",
    "baking",
    "switching",
    "watching",
    "rolling_back",
)

#: The reason a plan stopped by the kill switch starts with.
KILLED = "kill switch"


class RolloutError(RuntimeError):
    """A rollout command cannot do what was asked; the message says why. Nothing was
    changed unless the message says so."""


class LeaseHeld(RolloutError):
    """Another ``rollout run`` holds the plan's lease."""


@dataclass(frozen=True)
class PlanRow:
    """One plan row as Python values (see :data:`flags.tables.ROLLOUT_PLANS`)."""

    entity: str
    plan_id: str
    definition: dict[str, Any]
    state: str
    reason: str | None
    wave: int
    phase: str
    phase_at: datetime | None
    wave_started_at: datetime | None
    before: dict[str, int] | None
    baseline: dict[str, Any] | None
    expected: dict[str, int] | None
    guard: dict[str, Any] | None
    owner: str | None
    lease_expires: datetime | None
    created_by: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> PlanRow:
        return cls(**{f.name: rec[f.name] for f in fields(cls)})

    def held(self, now: datetime | None = None) -> bool:
        """Whether a run holds a lease that has not expired."""
        at = now or now_utc()
        return self.owner is not None and self.lease_expires is not None and self.lease_expires > at

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.isoformat() if isinstance(value, datetime) else value
        return out


def ensure(sql: SqlStore) -> None:
    sql.ensure_schema([ROLLOUT_PLANS, ROLLOUT_EVENTS])


def load(sql: SqlStore, entity: str) -> PlanRow | None:
    with sql.transaction() as cur:
        recs = bookkeeping.select(cur, sql.dialect, ROLLOUT_PLANS, {"entity": entity})
    return PlanRow.from_record(recs[0]) if recs else None


def create(
    sql: SqlStore,
    entity: str,
    definition: dict[str, Any],
    expected: dict[str, int],
    actor: str,
    *,
    replace_states: Sequence[str],
) -> PlanRow:
    """A new plan for ``entity`` (state ``planned``, first wave, nothing done).

    The entity's previous row is replaced when its state is one of ``replace_states``
    and no run holds it; otherwise RolloutError (checked in the same transaction).
    """
    d = sql.dialect
    now = now_utc()
    plan_id = str(uuid.uuid4())
    values = {
        "entity": entity,
        "plan_id": plan_id,
        "definition": definition,
        "state": PLANNED,
        "reason": None,
        "wave": 0,
        "phase": PENDING,
        "expected": expected,
        "created_by": actor,
        "created_at": now,
        "updated_at": now,
    }
    with sql.transaction() as cur:
        recs = bookkeeping.select(cur, d, ROLLOUT_PLANS, {"entity": entity})
        if recs:
            old = PlanRow.from_record(recs[0])
            if old.state not in replace_states or old.held(now):
                raise RolloutError(
                    f"the {entity} plan {old.plan_id[:8]} is {old.state}; not replaced"
                )
            bookkeeping.delete(cur, d, ROLLOUT_PLANS, {"entity": entity})
        bookkeeping.insert(cur, d, ROLLOUT_PLANS, values)
        _event(cur, sql, entity, plan_id, 0, "planned", actor, None, definition)
    found = load(sql, entity)
    assert found is not None
    return found


def acquire(sql: SqlStore, entity: str, owner: str, ttl_s: float) -> PlanRow:
    """Take the plan's lease for ``owner`` and mark it ``running``; the row as taken.

    One conditional UPDATE (the plan runnable, its lease free or expired) decides.
    Refusals say why: no plan, paused (and why), ended, or held (by whom, until when).
    """
    d = sql.dialect
    q = d.quote
    now = now_utc()
    cond, params = bookkeeping.in_list(d, ROLLOUT_PLANS, "state", list(RUNNABLE))
    with sql.transaction() as cur:
        won = bookkeeping.update(
            cur,
            d,
            ROLLOUT_PLANS,
            {
                "state": RUNNING,
                "owner": owner,
                "lease_expires": now + timedelta(seconds=ttl_s),
                "updated_at": now,
            },
            {"entity": entity},
            extra=f"({cond}) AND ({q('owner')} IS NULL OR {q('lease_expires')} < ?)",
            extra_params=[*params, d.to_db("datetime", now)],
        )
    row = load(sql, entity)
    if won and row is not None:
        return row
    raise _refusal(entity, row, now)


def _refusal(entity: str, row: PlanRow | None, now: datetime) -> RolloutError:
    if row is None:
        return RolloutError(
            f"no rollout plan for {entity}: `cutover rollout plan {entity}` makes one "
            "(`--dry-run` shows its waves first)"
        )
    if row.state == PAUSED:
        return RolloutError(
            f"the {entity} plan is paused ({row.reason}): `cutover rollout resume {entity}`"
        )
    if row.state not in RUNNABLE:
        return RolloutError(
            f"the {entity} plan has ended ({row.state}: {row.reason or 'no reason given'}); "
            f"`cutover rollout plan {entity}` makes a new one"
        )
    until = f"{row.lease_expires:%Y-%m-%d %H:%M:%S}Z" if row.lease_expires else "?"
    return LeaseHeld(
        f"refused: another `rollout run` holds the {entity} plan: {row.owner}, lease until "
        f"{until}. Only one run acts on a plan; if that process is gone, its lease expires "
        f"then and `cutover rollout run {entity}` takes over where it stopped"
    )


def _held_by(sql: SqlStore, entity: str, owner: str, plan_id: str) -> tuple[str, list[Any]]:
    d = sql.dialect
    q = d.quote
    return (
        f"{q('owner')} = ? AND {q('plan_id')} = ? AND {q('state')} = ?",
        [d.to_db("string", owner), d.to_db("key", plan_id), d.to_db("key", RUNNING)],
    )


def update_held(
    sql: SqlStore,
    row: PlanRow,
    owner: str,
    ttl_s: float,
    values: Mapping[str, Any] | None = None,
    *,
    event: tuple[str, str | None, Any] | None = None,
    actor: str = "",
) -> bool:
    """Write ``values`` (and renew the lease) if ``owner`` still holds the running plan;
    False when it does not (paused, aborted, stopped, or taken over): nothing written
    then. ``event`` (name, detail, figures) is recorded in the same transaction."""
    d = sql.dialect
    now = now_utc()
    extra, params = _held_by(sql, row.entity, owner, row.plan_id)
    with sql.transaction() as cur:
        ok = bookkeeping.update(
            cur,
            d,
            ROLLOUT_PLANS,
            {
                **(values or {}),
                "lease_expires": now + timedelta(seconds=ttl_s),
                "updated_at": now,
            },
            {"entity": row.entity},
            extra=extra,
            extra_params=params,
        )
        if ok and event is not None:
            _event(cur, sql, row.entity, row.plan_id, row.wave, event[0], actor, *event[1:])
    return bool(ok)


def release(sql: SqlStore, entity: str, owner: str) -> None:
    """Give the lease back (whatever the state: a paused plan keeps no owner)."""
    with sql.transaction() as cur:
        bookkeeping.update(
            cur,
            sql.dialect,
            ROLLOUT_PLANS,
            {"owner": None, "lease_expires": None, "updated_at": now_utc()},
            {"entity": entity, "owner": owner},
        )


def set_state(
    sql: SqlStore,
    entity: str,
    state: str,
    reason: str | None,
    actor: str,
    *,
    only_from: Sequence[str],
    event: str,
    figures: Any = None,
    values: Mapping[str, Any] | None = None,
    plan_id: str | None = None,
) -> PlanRow | None:
    """Move the plan to ``state`` if it is in one of ``only_from`` (and is ``plan_id``,
    when given); the row after, or None when it was not in those states."""
    d = sql.dialect
    cond, params = bookkeeping.in_list(d, ROLLOUT_PLANS, "state", list(only_from))
    where: dict[str, Any] = {"entity": entity}
    if plan_id is not None:
        where["plan_id"] = plan_id
    with sql.transaction() as cur:
        recs = bookkeeping.select(cur, d, ROLLOUT_PLANS, where)
        ok = bookkeeping.update(
            cur,
            d,
            ROLLOUT_PLANS,
            {**(values or {}), "state": state, "reason": reason, "updated_at": now_utc()},
            where,
            extra=cond,
            extra_params=params,
        )
        if ok and recs:
            rec = recs[0]
            _event(cur, sql, entity, rec["plan_id"], rec["wave"], event, actor, reason, figures)
    return load(sql, entity) if ok else None


def stop_for_kill(sql: SqlStore, entity: str, actor: str, reason: str) -> bool:
    """The kill switch ends the entity's plan, if one has not ended: ``stopped``. A run
    acting on it stops at its next write (and applies the kill again if a step of its
    was in flight). True when a plan was stopped."""
    ensure(sql)
    row = set_state(
        sql,
        entity,
        STOPPED,
        f"{KILLED} by {actor}: {reason}",
        actor,
        only_from=ACTIVE,
        event="stopped",
    )
    return row is not None


# -- events -------------------------------------------------------------------------------
def _event(
    cur: Any,
    sql: SqlStore,
    entity: str,
    plan_id: str,
    wave: int | None,
    event: str,
    actor: str,
    detail: str | None,
    figures: Any,
) -> None:
    bookkeeping.insert(
        cur,
        sql.dialect,
        ROLLOUT_EVENTS,
        {
            "id": str(uuid.uuid4()),
            "entity": entity,
            "plan_id": plan_id,
            "wave": wave,
            "event": event,
            "actor": actor or "?",
            "detail": detail,
            "figures": figures,
            "at": now_utc(),
        },
    )


def add_event(
    sql: SqlStore,
    row: PlanRow,
    event: str,
    actor: str,
    detail: str | None = None,
    figures: Any = None,
) -> None:
    """An event of the plan, whatever its state (e.g. a step applied as it was paused)."""
    with sql.transaction() as cur:
        _event(cur, sql, row.entity, row.plan_id, row.wave, event, actor, detail, figures)


def events(sql: SqlStore, entity: str, plan_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """The plan's latest events, oldest first."""
    with sql.transaction() as cur:
        recs = bookkeeping.select(
            cur,
            sql.dialect,
            ROLLOUT_EVENTS,
            {"entity": entity, "plan_id": plan_id},
            order_by=("at", "id"),
            descending=True,
            limit=limit,
        )
    return list(reversed(recs))
