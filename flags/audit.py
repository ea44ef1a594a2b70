"""The stage-change audit: who, when, from, to, why, forced or not.

Kept in the SQL store (table ``cutover_flag_audit``). A rollback must never wait for
the SQL store, so when it is down the record goes to a local file
(``<state_dir>/flags/audit-pending.jsonl``) and is moved into the table by the next
command that reaches the store; nothing is lost and the flag change is not delayed.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cutover.clock import now_utc
from stores.mapping import parse_datetime
from stores.sql import SqlStore, StoreUnavailable

from .tables import AUDIT

log = logging.getLogger(__name__)
_COLUMNS = [c.name for c in AUDIT.columns]


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


class AuditLog:
    def __init__(self, store: SqlStore, state_dir: Path) -> None:
        self._store = store
        self.pending_path = state_dir / "flags" / "audit-pending.jsonl"

    def _insert(self, changes: list[Change]) -> None:
        d = self._store.dialect
        q = d.quote
        sql = (
            f"INSERT INTO {q(AUDIT.name)} ({', '.join(q(c) for c in _COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
        )
        with self._store.transaction() as cur:
            for change in changes:
                values = asdict(change)
                cur.execute(sql, [d.to_db(c.kind, values[c.name]) for c in AUDIT.columns])

    def record(self, changes: list[Change]) -> bool:
        """Store changes; True if in the SQL store, False if parked in the pending file."""
        if not changes:
            return True
        try:
            self.flush_pending()
            self._insert(changes)
            return True
        except StoreUnavailable as exc:
            self.pending_path.parent.mkdir(parents=True, exist_ok=True)
            with self.pending_path.open("a", encoding="utf-8") as fh:
                for change in changes:
                    fh.write(json.dumps(change.to_json()) + "\n")
            log.warning("SQL store unavailable (%s); audit kept in %s", exc, self.pending_path)
            return False

    def flush_pending(self) -> int:
        """Move parked records into the table (idempotent: ids already there are skipped)."""
        if not self.pending_path.exists():
            return 0
        lines = self.pending_path.read_text(encoding="utf-8").splitlines()
        parked = [Change.from_json(json.loads(line)) for line in lines if line.strip()]
        present = self._ids_present([c.id for c in parked])
        self._insert([c for c in parked if c.id not in present])
        self.pending_path.unlink()
        return len(parked)

    def _ids_present(self, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        q = self._store.dialect.quote
        found: set[str] = set()
        with self._store.transaction() as cur:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                cur.execute(
                    f"SELECT {q('id')} FROM {q(AUDIT.name)} WHERE {q('id')} IN "
                    f"({', '.join('?' for _ in chunk)})",
                    chunk,
                )
                found.update(r[0] for r in cur.fetchall())
        return found

    def history(self, entity: str, client_id: str | None = None) -> list[Change]:
        """Every change of an entity (or one client), oldest first."""
        d = self._store.dialect
        q = d.quote
        columns = ", ".join(q(c) for c in _COLUMNS)
        sql = f"SELECT {columns} FROM {q(AUDIT.name)} WHERE {q('entity')} = ?"
        params: list[Any] = [entity]
        if client_id is not None:
            sql += f" AND {q('client_id')} = ?"
            params.append(client_id)
        sql += f" ORDER BY {q('at')}, {q('id')}"
        with self._store.transaction() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
        return [
            Change(**{c.name: d.from_db(c.kind, v) for c, v in zip(AUDIT.columns, r, strict=True)})
            for r in rows
        ]

    def latest(self, entity: str) -> dict[str, Change]:
        """The last change per client of an entity."""
        return {c.client_id: c for c in self.history(entity)}
