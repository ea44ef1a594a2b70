"""The stage-change audit: who, when, from, to, why, forced or not.

Kept in the SQL store: one row per client whose stage changed (table
``cutover_flag_audit``; a cohort step writes one per known client it switched, in
batches), and one row per change of a cohort's percentage (``cutover_flag_cohort_steps``).
A rollback must never wait for the SQL store, so when it is down the records go to a
local file (``<state_dir>/flags/audit-pending.jsonl``) and are moved into the tables by
the next command that reaches the store; nothing is lost and the flag change is not
delayed.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from core.clock import now_utc
from stores.mapping import parse_datetime
from stores.sql import SqlStore, StoreUnavailable, Table

from .tables import AUDIT, COHORT_STEPS

log = logging.getLogger(__name__)
_COLUMNS = [c.name for c in AUDIT.columns]
#: Parameters per INSERT statement, under every dialect's limit (SQLite's old 999,
#: SQL Server's 2,100 and its 1,000 rows per VALUES).
_PARAMS_PER_INSERT = 990


@dataclass(frozen=True)
class Change:
    entity: str
    client_id: str
    from_stage: str
    to_stage: str
    actor: str
    reason: str | None = None
    forced: bool = False
    gate: str | None = None
    backend: str = "file"
    at: datetime = field(default_factory=now_utc)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = self.at.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Change:
        return cls(**{**data, "at": parse_datetime(data["at"])})


@dataclass(frozen=True)
class CohortStep:
    """One change of a cohort's percentage, with what the gate said about it."""

    entity: str
    stage: str
    from_percent: int
    to_percent: int
    actor: str
    #: Known clients whose stage the step changed, and those that failed the gate.
    switched: int = 0
    blocked: int = 0
    reason: str | None = None
    forced: bool = False
    gate: str | None = None
    backend: str = "file"
    at: datetime = field(default_factory=now_utc)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = self.at.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CohortStep:
        return cls(**{**data, "at": parse_datetime(data["at"])})


_STEP = "cohort_step"  # the pending file's marker of a CohortStep line


class AuditLog:
    def __init__(self, store: SqlStore, state_dir: Path) -> None:
        self._store = store
        self.pending_path = state_dir / "flags" / "audit-pending.jsonl"

    def _insert(self, table: Table, records: list[Change] | list[CohortStep]) -> None:
        """Many rows per statement, all in one transaction."""
        if not records:
            return
        d = self._store.dialect
        q = d.quote
        names = ", ".join(q(c.name) for c in table.columns)
        one = f"({', '.join('?' for _ in table.columns)})"
        per = max(1, _PARAMS_PER_INSERT // len(table.columns))
        with self._store.transaction() as cur:
            for start in range(0, len(records), per):
                chunk = records[start : start + per]
                params: list[Any] = []
                for record in chunk:
                    values = asdict(record)
                    params += [d.to_db(c.kind, values[c.name]) for c in table.columns]
                cur.execute(
                    f"INSERT INTO {q(table.name)} ({names}) VALUES {', '.join([one] * len(chunk))}",
                    params,
                )

    def _insert_all(self, changes: list[Change], steps: list[CohortStep]) -> None:
        self._insert(COHORT_STEPS, steps)
        self._insert(AUDIT, changes)

    def record(self, changes: list[Change], steps: list[CohortStep] | None = None) -> bool:
        """Store changes (and cohort steps); True if in the SQL store, False if parked
        in the pending file."""
        steps = steps or []
        if not changes and not steps:
            return True
        try:
            self.flush_pending()
            self._insert_all(changes, steps)
            return True
        except StoreUnavailable as exc:
            self.pending_path.parent.mkdir(parents=True, exist_ok=True)
            with self.pending_path.open("a", encoding="utf-8") as fh:
                for step in steps:
                    fh.write(json.dumps({**step.to_json(), "kind": _STEP}) + "\n")
                for change in changes:
                    fh.write(json.dumps(change.to_json()) + "\n")
            log.warning("SQL store unavailable (%s); audit kept in %s", exc, self.pending_path)
            return False

    def flush_pending(self) -> int:
        """Move parked records into the tables (idempotent: ids already there are skipped)."""
        if not self.pending_path.exists():
            return 0
        lines = self.pending_path.read_text(encoding="utf-8").splitlines()
        data = [json.loads(line) for line in lines if line.strip()]
        steps = [CohortStep.from_json(d) for d in data if d.pop("kind", None) == _STEP]
        changes = [Change.from_json(d) for d in data if "client_id" in d]
        done = self._ids_present(COHORT_STEPS, [s.id for s in steps])
        present = self._ids_present(AUDIT, [c.id for c in changes])
        self._insert_all(
            [c for c in changes if c.id not in present], [s for s in steps if s.id not in done]
        )
        self.pending_path.unlink()
        return len(data)

    def _ids_present(self, table: Table, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        q = self._store.dialect.quote
        found: set[str] = set()
        with self._store.transaction() as cur:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                cur.execute(
                    f"SELECT {q('id')} FROM {q(table.name)} WHERE {q('id')} IN "
                    f"({', '.join('?' for _ in chunk)})",
                    chunk,
                )
                found.update(r[0] for r in cur.fetchall())
        return found

    def history(self, entity: str, client_id: str | None = None) -> list[Change]:
        """Every change of an entity (or one client), oldest first."""
        q = self._store.dialect.quote
        columns = ", ".join(q(c) for c in _COLUMNS)
        sql = f"SELECT {columns} FROM {q(AUDIT.name)} WHERE {q('entity')} = ?"
        params: list[Any] = [entity]
        if client_id is not None:
            sql += f" AND {q('client_id')} = ?"
            params.append(client_id)
        sql += f" ORDER BY {q('at')}, {q('id')}"
        return self._changes(sql, params)

    def _changes(self, sql: str, params: list[Any]) -> list[Change]:
        d = self._store.dialect
        with self._store.transaction() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
        return [
            Change(**{c.name: d.from_db(c.kind, v) for c, v in zip(AUDIT.columns, r, strict=True)})
            for r in rows
        ]

    def latest(self, entity: str) -> dict[str, Change]:
        """The last change per client of an entity (one row per client is read)."""
        q = self._store.dialect.quote
        columns = ", ".join(q(c) for c in _COLUMNS)
        sql = (
            f"SELECT {columns} FROM (SELECT {columns}, ROW_NUMBER() OVER (PARTITION BY "
            f"{q('client_id')} ORDER BY {q('at')} DESC, {q('id')} DESC) AS {q('rn')} "
            f"FROM {q(AUDIT.name)} WHERE {q('entity')} = ?) {q('last')} WHERE {q('rn')} = 1"
        )
        return {c.client_id: c for c in self._changes(sql, [entity])}

    def steps(self, entity: str) -> list[CohortStep]:
        """Every cohort step of an entity, oldest first."""
        d = self._store.dialect
        q = d.quote
        cols = COHORT_STEPS.columns
        sql = (
            f"SELECT {', '.join(q(c.name) for c in cols)} FROM {q(COHORT_STEPS.name)} "
            f"WHERE {q('entity')} = ? ORDER BY {q('at')}, {q('id')}"
        )
        with self._store.transaction() as cur:
            cur.execute(sql, [entity])
            rows = cur.fetchall()
        return [
            CohortStep(**{c.name: d.from_db(c.kind, v) for c, v in zip(cols, r, strict=True)})
            for r in rows
        ]
