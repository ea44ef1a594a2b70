"""Changing read stages: one client (set, rollback, except), a cohort step, kill; audited.

The flag backend is the truth for stages; the audit says who moved whom, when and
why. Every change is computed offline first (:class:`flags.stages.StageRules`), so
the list limits and the gate are checked before anything is written, and a refusal
changes nothing. Moves are ordered so no reader ever sees a client pass through a
stage it is not moving to: the target flag gains the client before the other flag
loses it (``new`` wins over ``shadow``). A cohort step is computed over every client
cutover knows (:func:`flags.state.known_clients`) with the SDK's own hash, so the gate
checks exactly the known clients the step switches. Rollback and kill touch only the
flags, never the gate, so they work while the stores are down (the audit then waits in
a local file).
"""

from __future__ import annotations

import contextlib
import getpass
import socket
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from core.clock import now_utc
from core.redaction import redact
from stores.rethink import RethinkUnavailable
from stores.runtime import Runtime
from stores.sql import StoreUnavailable

from .audit import AuditLog, Change, CohortStep
from .backend import FlagBackend, backend_for
from .evidence import ShadowPolicy
from .gate import BulkGateRefused, Gate, GateDecision, GateRefused, LedgerReader
from .stages import (
    DEFAULT_LIST_LIMIT,
    FLAGGED,
    EntityFlags,
    FlagError,
    InputError,
    Stage,
    StageRule,
    StageRules,
    check_client_id,
    check_percent,
    flag_name,
)
from .state import known_clients
from .tables import TABLES

#: How many blocking clients a refusal names (all of them go to its file).
NAMED_IN_REFUSAL = 5


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class ClientStage:
    client_id: str
    stage: Stage
    last: Change | None
    #: The flags disagree with the audit: edited outside cutover (e.g. Unleash's UI).
    changed_outside: bool
    #: Why it is at its stage: pilot, cohort, held, outside (a strategy or switch
    #: cutover did not make decides) or default (old, in no list or cohort).
    via: str = "default"

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.client_id,
            "stage": self.stage.value,
            "via": self.via,
            "changed_outside": self.changed_outside,
            "last_change": self.last.to_json() if self.last else None,
        }


@dataclass(frozen=True)
class EntityStatus:
    entity: str
    where: str
    clients: list[ClientStage]
    warnings: list[str]
    rules: StageRules | None = None
    list_limit: int = DEFAULT_LIST_LIMIT
    #: The last audited cohort step per stage.
    steps: dict[str, CohortStep] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        found = Counter(c.stage.value for c in self.clients)
        return {s.value: found.get(s.value, 0) for s in Stage}

    def to_json(self) -> dict[str, Any]:
        return {
            "entity": self.entity,
            "backend": self.where,
            "warnings": self.warnings,
            "rules": self.rules.to_json() if self.rules else None,
            "list_limit": self.list_limit,
            "counts": self.counts,
            "cohort_steps": {s: step.to_json() for s, step in self.steps.items()},
            "clients": [c.to_json() for c in self.clients],
        }


@dataclass(frozen=True)
class CohortPlan:
    """What a cohort step does to the known clients, and what the gate says of it."""

    entity: str
    stage: Stage
    from_percent: int
    to_percent: int
    known: int
    #: Known clients whose stage changes: client -> (from, to).
    moves: dict[str, tuple[Stage, Stage]]
    #: Clients the step would switch to new that fail the gate, with the reason.
    blocked: list[tuple[str, str]]
    #: The gate's decision for each client switched to new.
    decisions: dict[str, GateDecision] = field(default_factory=dict)
    refused_path: Path | None = None
    applied: bool = False
    forced: bool = False
    #: Why the known clients could not be listed (a store down during a step down):
    #: only the listed clients are counted and audited then.
    unknown: str | None = None

    @property
    def to_new(self) -> list[str]:
        return sorted(c for c, (_, to) in self.moves.items() if to is Stage.NEW)

    def to_json(self) -> dict[str, Any]:
        moved = Counter(f"{a.value}->{b.value}" for a, b in self.moves.values())
        return {
            "entity": self.entity,
            "stage": self.stage.value,
            "from_percent": self.from_percent,
            "to_percent": self.to_percent,
            "known_clients": self.known,
            "switched": len(self.moves),
            "moves": dict(sorted(moved.items())),
            "to_new": len(self.to_new),
            "blocked": len(self.blocked),
            "blocked_first": [{"client": c, "reason": r} for c, r in self.blocked[:20]],
            "blocked_file": str(self.refused_path) if self.refused_path else None,
            "applied": self.applied,
            "forced": self.forced,
            "known_clients_unavailable": self.unknown,
        }


class _PartialWrite(FlagError):
    """The first flag of a move was written, a later one failed."""

    def __init__(self, message: str, done: list[Stage]) -> None:
        super().__init__(message)
        self.done = done


def _write_order(target: Stage) -> tuple[Stage, Stage]:
    """Target flag first: ``new`` wins, so the client never passes through a stage it
    is not moving to (to ``old``: out of ``new`` first, the store it must leave)."""
    return (Stage.SHADOW, Stage.NEW) if target is Stage.SHADOW else (Stage.NEW, Stage.SHADOW)


class FlagService:
    """Stage changes for one runtime (settings, config, stores)."""

    def __init__(
        self,
        runtime: Runtime,
        backend: FlagBackend | None = None,
        *,
        ledger_reader: LedgerReader | None = None,
    ) -> None:
        self.runtime = runtime
        self.backend = backend or backend_for(runtime.settings)
        self.audit = AuditLog(runtime.sql, runtime.settings.state_dir)
        self._ledger_reader = ledger_reader
        self._schema_ready = False

    def close(self) -> None:
        self.backend.close()

    def ensure_schema(self) -> None:
        if not self._schema_ready:
            self.runtime.sql.ensure_schema(TABLES)
            self._schema_ready = True

    def _entity(self, entity: str) -> str:
        return self.runtime.cfg.entity(entity).name  # ConfigError names the known ones

    def gate(self) -> Gate:
        return Gate(
            self.runtime.sql,
            self.runtime.settings.gate_max_verification_age_s,
            self._ledger_reader,
            shadow=ShadowPolicy.from_settings(self.runtime.settings),
        )

    def _flags(self, name: str) -> EntityFlags:
        flags = self.backend.read(name)
        if not (flags.shadow.exists and flags.new.exists):
            self.backend.ensure([name])
            flags = self.backend.read(name)
        return flags

    # -- reading ----------------------------------------------------------------------
    def known_clients(self, entity: str) -> set[str]:
        """Every client either store holds for the entity (tombstones included) or the
        backfill ledger lists."""
        self.ensure_schema()
        return known_clients(self.runtime, entity)

    def _is_known(self, entity: str, client_id: str, flags: EntityFlags) -> bool:
        """Whether a store or the ledger holds the client (index lookups, not a scan) or
        a flag list names it."""
        if client_id in flags.listed_clients():
            return True
        ent = self.runtime.cfg.entity(entity)
        if (
            self.runtime.rethink.count(ent, client_id) > 0
            or self.runtime.sql.count(ent, client_id, include_deleted=True) > 0
        ):
            return True
        from backfill.ledger import client_status

        return client_status(self.runtime.sql, ent.name, client_id) is not None

    def _last_steps(self, name: str) -> dict[str, CohortStep]:
        return {step.stage: step for step in self.audit.steps(name)}

    def status(self, entity: str) -> EntityStatus:
        """Every known client's stage, why, and whether the audit explains it.

        A client with an audit row is expected at its last audited stage; one without
        is expected where the audited cohort percentages put it (no list names it
        then, since every list change is audited). A difference is an edit made
        outside cutover (e.g. in Unleash's UI).
        """
        name = self._entity(entity)
        flags = self.backend.read(name)
        self.ensure_schema()
        self.audit.flush_pending()
        latest = self.audit.latest(name)
        steps = self._last_steps(name)
        audited = StageRules(
            name,
            StageRule(percent=steps["shadow"].to_percent if "shadow" in steps else 0),
            StageRule(percent=steps["new"].to_percent if "new" in steps else 0),
        )
        rules = flags.rules
        rows = []
        for client in sorted(known_clients(self.runtime, name) | rules.listed() | set(latest)):
            b = rules.bucket(client)
            stage = flags.stage_of(client, b)
            last = latest.get(client)
            expected = Stage(last.to_stage) if last else audited.cohort_stage(b)
            via = rules.via(client, b) if stage is rules.stage_of(client, b) else "outside"
            rows.append(ClientStage(client, stage, last, stage is not expected, via))
        warnings = flags.warnings() + _step_warnings(flags, steps)
        return EntityStatus(
            name, self.backend.where(), rows, warnings, rules, self.backend.list_limit(), steps
        )

    # -- one client -------------------------------------------------------------------
    def set_stage(
        self,
        entity: str,
        client_id: str,
        stage: Stage | str,
        *,
        actor: str | None = None,
        reason: str | None = None,
        force: bool = False,
        now: datetime | None = None,
        hold: bool = False,
    ) -> Change | None:
        """Move one client; None when nothing changes (nothing audited then).

        ``new`` needs the gate (or ``force``); a forward move of an id neither store
        nor the ledger knows is refused too (a typo would otherwise switch nobody,
        silently), unless forced. A move back holds the client at ``stage`` (it is
        excepted from the later cohorts); ``hold`` does so for a move forward too, and
        for a client already at ``stage``.
        """
        name = self._entity(entity)
        target = Stage(stage)
        check_client_id(client_id)
        if hold and target is Stage.NEW:
            raise InputError("a client is held at old or shadow; `new` is not a hold")
        flags = self._flags(name)
        if flags.stage_of(client_id) is target and not hold:
            return None
        after = flags.rules.moved(client_id, target, hold=hold)
        note = f"held at {target.value}" if hold else None
        return self._transition(flags, client_id, after, actor, reason or note, force, now)

    def rollback(
        self, entity: str, client_id: str, *, actor: str | None = None, reason: str | None = None
    ) -> Change | None:
        """Back to ``old`` now, and held there: no gate, no store needed."""
        return self.set_stage(
            entity, client_id, Stage.OLD, actor=actor, reason=reason or "rollback"
        )

    def hold(
        self,
        entity: str,
        client_id: str,
        stage: Stage | str = Stage.OLD,
        *,
        actor: str | None = None,
        reason: str | None = None,
        force: bool = False,
    ) -> Change | None:
        """Hold one client at ``old`` or ``shadow`` whatever the cohorts do."""
        return self.set_stage(
            entity, client_id, stage, actor=actor, reason=reason, force=force, hold=True
        )

    def release(
        self,
        entity: str,
        client_id: str,
        *,
        actor: str | None = None,
        reason: str | None = None,
        force: bool = False,
        now: datetime | None = None,
    ) -> Change | None:
        """Drop the client's exceptions: it follows the cohorts again (the gate applies
        when that switches it to ``new`` now). None when it had none."""
        name = self._entity(entity)
        check_client_id(client_id)
        flags = self._flags(name)
        after = flags.rules.released(client_id)
        return self._transition(flags, client_id, after, actor, reason or "released", force, now)

    def _transition(
        self,
        flags: EntityFlags,
        client_id: str,
        after: StageRules,
        actor: str | None,
        reason: str | None,
        force: bool,
        now: datetime | None,
    ) -> Change | None:
        """Check, write and audit one client's change from ``flags`` to ``after``."""
        name, before = flags.entity, flags.rules
        current, target = flags.stage_of(client_id), after.stage_of(client_id)
        if after == before and current is target:
            return None
        changed = [s for s in FLAGGED if after.rule(s) != before.rule(s)]
        after.check_limits(self.backend.list_limit(), changed=changed)
        gate_note: str | None = None
        overrides: list[str] = []
        if target.rank > current.rank or (target is current and client_id not in before.listed()):
            self.ensure_schema()
            if not self._is_known(name, client_id, flags):
                if not force:
                    raise GateRefused(
                        f"unknown client {client_id!r}: neither store nor the backfill ledger "
                        f"holds {name} for it (ids match exactly, case and spaces count)"
                    )
                overrides.append(f"unknown client {client_id!r}")
        if target is Stage.NEW and current is not Stage.NEW:
            decision = self.gate().check(name, client_id, now or now_utc())
            gate_note = decision.reason
            if not decision.allowed:
                if not force:
                    raise GateRefused(f"refused: {decision.reason}")
                overrides.append(decision.reason)
        if overrides:
            gate_note = "overridden with --force: " + "; ".join(overrides)

        def change(to: Stage, note: str | None = None) -> Change:
            return Change(
                entity=name,
                client_id=client_id,
                from_stage=current.value,
                to_stage=to.value,
                actor=actor or default_actor(),
                reason=" ".join(p for p in (reason, note) if p) or None,
                forced=bool(force and overrides),
                gate=gate_note,
                backend=self.backend.name,
            )

        try:
            self._write(flags, after, _write_order(target))
        except _PartialWrite as exc:
            partial = before
            for stage in exc.done:
                partial = partial.with_rule(stage, after.rule(stage))
            now_at = partial.stage_of(client_id)
            if now_at is not current:
                self._record([change(now_at, "(partly applied)")])
            done = ", ".join(flag_name(name, s) for s in exc.done)
            raise FlagError(
                f"{exc}. Only {done} had been changed: {client_id} now reads {now_at.value} "
                "(audited); run the command again to finish"
            ) from None
        result = change(target)
        self._record([result])
        return result

    def _write(self, flags: EntityFlags, after: StageRules, order: tuple[Stage, ...]) -> None:
        """Write each flag whose rule changes, or whose on/off state differs from its
        rule's (switched off outside cutover: the change needs it on again)."""
        done: list[Stage] = []
        for stage in order:
            rule = after.rule(stage)
            state = flags.flag(stage)
            if rule == state.rule and state.enabled is rule.switches_anyone:
                continue
            try:
                self.backend.apply(flags.entity, stage, rule)
            except FlagError as exc:
                if done:
                    raise _PartialWrite(str(exc), done) from None
                raise
            done.append(stage)

    # -- cohorts ----------------------------------------------------------------------
    def set_cohort(
        self,
        entity: str,
        stage: Stage | str,
        percent: int | str,
        *,
        actor: str | None = None,
        reason: str | None = None,
        force: bool = False,
        now: datetime | None = None,
        dry_run: bool = False,
    ) -> CohortPlan:
        """Set the ``stage`` cohort of ``entity`` to ``percent``% of clients.

        Every known client the step would switch to ``new`` must pass the gate; a
        refusal (BulkGateRefused) names how many block it and the first ones, writes
        them all to a file, and changes nothing. ``force`` overrides it (audited per
        client); ``dry_run`` computes the plan and the gate's verdict only.
        """
        name = self._entity(entity)
        target = Stage(stage)
        if target is Stage.OLD:
            raise InputError("old has no cohort: it is where clients in no cohort are")
        to_percent = check_percent(percent)
        flags = self._flags(name)
        after = flags.rules.with_percent(target, to_percent)
        at = now or now_utc()
        plan = self._plan(flags, after, target, at)
        if plan.blocked:
            plan = replace(plan, refused_path=self._write_refusal(plan, at))
        if dry_run or (after == flags.rules and not plan.moves):
            return plan
        if plan.blocked and not force:
            raise BulkGateRefused(_refusal(plan), plan.blocked, plan.refused_path)
        self.backend.apply(name, target, after.rule(target))
        self._record_step(plan, actor or default_actor(), reason, force)
        return replace(plan, applied=True, forced=bool(force and plan.blocked))

    def _plan(
        self, flags: EntityFlags, after: StageRules, stage: Stage, now: datetime
    ) -> CohortPlan:
        """The step over every known client. A step down needs no gate, so it goes on
        while a store is down (an incident is when it is needed), over the listed
        clients only, and says so (``unknown``)."""
        unknown: str | None = None
        try:
            self.ensure_schema()
            known = known_clients(self.runtime, flags.entity)
        except (StoreUnavailable, RethinkUnavailable) as exc:
            if after.rule(stage).percent > flags.rules.rule(stage).percent:
                raise
            known, unknown = set(), redact(str(exc))
        known |= flags.listed_clients()
        moves: dict[str, tuple[Stage, Stage]] = {}
        for client in known:
            b = after.bucket(client)
            was, will = flags.stage_of(client, b), after.stage_of(client, b)
            if was is not will:
                moves[client] = (was, will)
        to_new = sorted(c for c, (_, to) in moves.items() if to is Stage.NEW)
        decisions = self.gate().check_many(flags.entity, to_new, now) if to_new else {}
        blocked = [(c, d.reason) for c, d in sorted(decisions.items()) if not d.allowed]
        return CohortPlan(
            flags.entity,
            stage,
            flags.rules.rule(stage).percent,
            after.rule(stage).percent,
            len(known),
            moves,
            blocked,
            decisions,
            unknown=unknown,
        )

    def _write_refusal(self, plan: CohortPlan, now: datetime) -> Path:
        folder = self.runtime.settings.state_dir / "flags" / "refused"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (
            f"{plan.entity}.{plan.stage.value}.{plan.to_percent}pct.{now:%Y%m%dT%H%M%S%fZ}.tsv"
        )
        lines = ["client\treason", *(f"{c}\t{r}" for c, r in plan.blocked)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def _record_step(self, plan: CohortPlan, actor: str, reason: str | None, force: bool) -> None:
        what = f"cohort {plan.stage.value} {plan.from_percent}% -> {plan.to_percent}%"
        blocked = dict(plan.blocked)
        decisions = plan.decisions
        changes = []
        for client, (was, will) in sorted(plan.moves.items()):
            gate: str | None = None
            if client in blocked:
                gate = f"overridden with --force: {blocked[client]}"
            elif client in decisions:
                gate = decisions[client].reason
            changes.append(
                Change(
                    entity=plan.entity,
                    client_id=client,
                    from_stage=was.value,
                    to_stage=will.value,
                    actor=actor,
                    reason=f"{reason} ({what})" if reason else what,
                    forced=client in blocked,
                    gate=gate,
                    backend=self.backend.name,
                )
            )
        step = CohortStep(
            entity=plan.entity,
            stage=plan.stage.value,
            from_percent=plan.from_percent,
            to_percent=plan.to_percent,
            actor=actor,
            switched=len(plan.moves),
            blocked=len(plan.blocked),
            reason=reason,
            forced=bool(force and plan.blocked),
            gate=_refusal(plan) if plan.blocked else f"{len(plan.to_new)} to new, all passed",
            backend=self.backend.name,
        )
        self._record(changes, [step])

    # -- everyone ---------------------------------------------------------------------
    def kill(
        self, entity: str, *, actor: str | None = None, reason: str | None = None
    ) -> list[Change]:
        """Every client of the entity back to ``old`` at once (lists, cohorts and
        exceptions cleared); one audit row per known client that moved, one cohort
        step per cohort. With the stores down, only listed clients get a row. A rollout
        plan of the entity that has not ended is stopped (:mod:`flags.rollout`)."""
        name = self._entity(entity)
        flags = self.backend.read(name)
        try:
            self.ensure_schema()
            known = known_clients(self.runtime, name)
        except (StoreUnavailable, RethinkUnavailable):
            known = set()  # the cohort steps below still record what happened
        self.backend.kill(name)
        who = actor or default_actor()
        why = reason or "kill switch"
        changes = [
            Change(
                entity=name,
                client_id=client,
                from_stage=flags.stage_of(client).value,
                to_stage=Stage.OLD.value,
                actor=who,
                reason=why,
                backend=self.backend.name,
            )
            for client in sorted(known | flags.listed_clients())
            if flags.stage_of(client) is not Stage.OLD
        ]
        steps = [
            CohortStep(
                entity=name,
                stage=stage.value,
                from_percent=flags.flag(stage).rule.percent,
                to_percent=0,
                actor=who,
                switched=sum(1 for c in changes if c.from_stage == stage.value),
                reason=why,
                backend=self.backend.name,
            )
            for stage in FLAGGED
            if flags.flag(stage).rule.percent > 0
        ]
        self._record(changes, steps)
        from .rollout_state import stop_for_kill  # the plan ends too (a run stops at once)

        with contextlib.suppress(StoreUnavailable):  # then the run sees the flags changed
            stop_for_kill(self.runtime.sql, name, who, why)
        return changes

    def _record(self, changes: list[Change], steps: list[CohortStep] | None = None) -> bool:
        with contextlib.suppress(StoreUnavailable):  # the audit log parks them in a file
            self.ensure_schema()
        return self.audit.record(changes, steps)


def _refusal(plan: CohortPlan) -> str:
    first = "; ".join(reason for _, reason in plan.blocked[:NAMED_IN_REFUSAL])
    more = len(plan.blocked) - NAMED_IN_REFUSAL
    return (
        f"refused: {len(plan.blocked)} of the {len(plan.to_new)} known clients that "
        f"`cohort {plan.stage.value} {plan.to_percent}%` would switch to new fail the gate"
        f" (first: {first}{f'; and {more} more' if more > 0 else ''}). All of them are "
        f"listed in {plan.refused_path}. Fix them (backfill, verify), hold them back "
        f"(`cutover flags except {plan.entity} CLIENT`), or override with --force (audited)."
    )


def _step_warnings(flags: EntityFlags, steps: dict[str, CohortStep]) -> list[str]:
    """A cohort percentage that differs from the last one cutover set."""
    out = []
    for stage in FLAGGED:
        percent = flags.flag(stage).rule.percent
        step = steps.get(stage.value)
        audited = step.to_percent if step else 0
        if percent != audited:
            by = (
                f"the last change cutover made set it to {audited}% ({step.actor}, "
                f"{step.at:%Y-%m-%d %H:%M}Z)"
                if step
                else "cutover never set it"
            )
            out.append(
                f"{flag_name(flags.entity, stage)}: its cohort is at {percent}% but {by}: "
                "changed outside cutover"
            )
    return out
