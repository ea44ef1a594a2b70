"""Changing read stages: set, rollback, kill, each audited.

The flag backend is the truth for stages; the audit says who moved whom, when and
why. Moves are ordered so no reader ever sees a client pass through a stage it is not
moving to: the target flag gains the client before the other flag loses it (``new``
wins over ``shadow``). Rollback and kill touch only the flags, never the gate or the
stores, so they work while the stores are down (the audit then waits in a local file).
"""

from __future__ import annotations

import contextlib
import getpass
import socket
from dataclasses import dataclass
from datetime import datetime

from cutover.clock import now_utc
from cutover.runtime import Runtime
from stores.sql import StoreUnavailable

from .audit import AuditLog, Change
from .backend import FlagBackend, backend_for
from .gate import Gate, GateRefused, LedgerReader
from .stages import EntityFlags, Stage, check_client_id
from .tables import TABLES


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
    #: The flags disagree with the last audited change: edited in Unleash's UI.
    changed_outside: bool


@dataclass(frozen=True)
class EntityStatus:
    entity: str
    where: str
    clients: list[ClientStage]
    warnings: list[str]


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
        )

    # -- reading ----------------------------------------------------------------------
    def known_clients(self, entity: str) -> set[str]:
        """Every client either store holds for the entity (tombstones included)."""
        ent = self.runtime.cfg.entity(entity)
        return set(self.runtime.sql.clients(ent)) | set(self.runtime.rethink.count_per_client(ent))

    def _is_known(self, entity: str, client_id: str, flags: EntityFlags) -> bool:
        """Whether a store holds the client (index lookups, not a scan) or a flag lists it."""
        if client_id in flags.listed_clients():
            return True
        ent = self.runtime.cfg.entity(entity)
        return (
            self.runtime.rethink.count(ent, client_id) > 0
            or self.runtime.sql.count(ent, client_id, include_deleted=True) > 0
        )

    def status(self, entity: str) -> EntityStatus:
        name = self._entity(entity)
        flags = self.backend.read(name)
        self.ensure_schema()
        self.audit.flush_pending()
        latest = self.audit.latest(name)
        clients = self.known_clients(name) | flags.listed_clients() | set(latest)
        rows = []
        for client in sorted(clients):
            stage = flags.stage_of(client)
            last = latest.get(client)
            audited = Stage(last.to_stage) if last else Stage.OLD
            rows.append(ClientStage(client, stage, last, stage is not audited))
        return EntityStatus(name, self.backend.where(), rows, flags.warnings())

    # -- changing ---------------------------------------------------------------------
    def _move(self, flags: EntityFlags, client_id: str, to: Stage) -> None:
        entity = flags.entity
        shadow, new = set(flags.shadow.ids), set(flags.new.ids)
        if to is Stage.NEW:
            if client_id not in new:
                self.backend.write(entity, Stage.NEW, new | {client_id})
            if client_id in shadow:
                self.backend.write(entity, Stage.SHADOW, shadow - {client_id})
        elif to is Stage.SHADOW:
            if client_id not in shadow:
                self.backend.write(entity, Stage.SHADOW, shadow | {client_id})
            if client_id in new:
                self.backend.write(entity, Stage.NEW, new - {client_id})
        else:
            if client_id in new:
                self.backend.write(entity, Stage.NEW, new - {client_id})
            if client_id in shadow:
                self.backend.write(entity, Stage.SHADOW, shadow - {client_id})

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
    ) -> Change | None:
        """Move one client; None when it already is at ``stage`` (nothing audited).

        ``new`` needs the gate (or ``force``); an id neither store knows is refused
        too (a typo would otherwise switch nobody, silently), unless forced.
        """
        name = self._entity(entity)
        target = Stage(stage)
        check_client_id(client_id)
        flags = self.backend.read(name)
        if not (flags.shadow.exists and flags.new.exists):
            self.backend.ensure([name])
            flags = self.backend.read(name)
        current = flags.stage_of(client_id)
        if current is target:
            return None
        gate_note: str | None = None
        overrides: list[str] = []
        if target is not Stage.OLD:
            self.ensure_schema()
            if not self._is_known(name, client_id, flags):
                if not force:
                    raise GateRefused(
                        f"unknown client {client_id!r}: neither store holds {name} for it "
                        "(ids match exactly, case and spaces count)"
                    )
                overrides.append(f"unknown client {client_id!r}")
        if target is Stage.NEW:
            decision = self.gate().check(name, client_id, now or now_utc())
            gate_note = decision.reason
            if not decision.allowed:
                if not force:
                    raise GateRefused(f"refused: {decision.reason}")
                overrides.append(decision.reason)
        if overrides:
            gate_note = "overridden with --force: " + "; ".join(overrides)
        self._move(flags, client_id, target)
        change = Change(
            entity=name,
            client_id=client_id,
            from_stage=current.value,
            to_stage=target.value,
            actor=actor or default_actor(),
            reason=reason,
            forced=bool(force and overrides),
            gate=gate_note,
            backend=self.backend.name,
        )
        self._record([change])
        return change

    def rollback(
        self, entity: str, client_id: str, *, actor: str | None = None, reason: str | None = None
    ) -> Change | None:
        """Back to ``old`` now: no gate, no store needed."""
        return self.set_stage(
            entity, client_id, Stage.OLD, actor=actor, reason=reason or "rollback"
        )

    def kill(
        self, entity: str, *, actor: str | None = None, reason: str | None = None
    ) -> list[Change]:
        """Every client of the entity back to ``old`` at once; one audit row per client."""
        name = self._entity(entity)
        flags = self.backend.read(name)
        self.backend.kill(name)
        who = actor or default_actor()
        changes = [
            Change(
                entity=name,
                client_id=client,
                from_stage=flags.stage_of(client).value,
                to_stage=Stage.OLD.value,
                actor=who,
                reason=reason or "kill switch",
                backend=self.backend.name,
            )
            for client in sorted(flags.listed_clients())
            if flags.stage_of(client) is not Stage.OLD
        ]
        self._record(changes)
        return changes

    def _record(self, changes: list[Change]) -> bool:
        with contextlib.suppress(StoreUnavailable):  # the audit log parks them in a file
            self.ensure_schema()
        return self.audit.record(changes)
