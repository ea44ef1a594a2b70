"""Runs, partitions and leases: how several workers share one backfill safely.

A *run* is identified by what it copies (entity, source data, client selection), so
the same command started again, on this machine or another, joins the same run and
resumes it. The run's *partitions* (one client, a byte range of an export file, or
the sweep of client-less documents) are the units of work.

A worker owns a partition through a *lease* (owner + expiry) stored in the
partition's row. Claiming is one conditional UPDATE (``... WHERE owner IS NULL OR
lease_expires < now``): the database lets exactly one claimant win. Every batch's
transaction ends with the checkpoint UPDATE ``... WHERE owner = me``; it renews the
lease, and when it matches no row the lease was taken over, so the whole batch rolls
back. Hence no partition is ever copied by two workers at once, and a dead worker's
partition is taken over once its lease expires (at once when the dead worker was a
process on this same machine).

Lease expiry uses each worker's clock: machines must agree on time to well within the
lease TTL (NTP), which the default TTL of 60 s leaves ample room for.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from core.clock import now_utc
from stores.sql import SqlStore, bookkeeping

from . import ledger
from .sources import PlannedPartition
from .tables import BAD_DOCS, PARTITIONS, RUNS

PENDING, DONE = "pending", "done"
RUNNING = "running"


class RestartRefused(RuntimeError):
    """``--restart`` while live workers still hold partitions of the run."""


class LeaseLost(RuntimeError):
    """Another worker took this partition over; the current batch was rolled back."""


@dataclass(frozen=True)
class Partition:
    run_id: str
    part: str
    entity: str
    ord: int
    client: str | None
    spec: dict[str, Any]
    status: str
    owner: str | None
    lease_expires: datetime | None
    position: str | None
    last_key: str | None
    est_rows: int
    rows_read: int
    rows_applied: int
    rows_stale: int
    bad_docs: int
    batches: int
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Partition:
        return cls(
            run_id=rec["run_id"],
            part=rec["part"],
            entity=rec["entity"],
            ord=int(rec["ord"]),
            client=rec["client"],
            spec=rec["spec"] or {},
            status=rec["status"],
            owner=rec["owner"],
            lease_expires=rec["lease_expires"],
            position=rec["position"],
            last_key=rec["last_key"],
            est_rows=int(rec["est_rows"] or 0),
            rows_read=int(rec["rows_read"] or 0),
            rows_applied=int(rec["rows_applied"] or 0),
            rows_stale=int(rec["rows_stale"] or 0),
            bad_docs=int(rec["bad_docs"] or 0),
            batches=int(rec["batches"] or 0),
            started_at=rec["started_at"],
            finished_at=rec["finished_at"],
        )


@dataclass(frozen=True)
class Run:
    run_id: str
    entity: str
    source: dict[str, Any]
    selection: list[str] | None
    status: str
    partitions: int
    created_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Run:
        return cls(
            run_id=rec["run_id"],
            entity=rec["entity"],
            source=json.loads(rec["source"] or "{}"),
            selection=json.loads(rec["selection"]) if rec["selection"] else None,
            status=rec["status"],
            partitions=int(rec["partitions"] or 0),
            created_at=rec["created_at"],
            finished_at=rec["finished_at"],
        )


def run_id_for(entity: str, source_identity: str, selection: Sequence[str] | None) -> str:
    """The same data and selection give the same run on every machine."""
    body = json.dumps([entity, source_identity, sorted(selection) if selection else None])
    return f"{entity[:30]}-{hashlib.sha256(body.encode()).hexdigest()[:20]}"


# -- runs ---------------------------------------------------------------------------------
def get_run(sql: SqlStore, run_id: str) -> Run | None:
    with sql.transaction() as cur:
        recs = bookkeeping.select(cur, sql.dialect, RUNS, {"run_id": run_id})
    return Run.from_record(recs[0]) if recs else None


def runs_for(sql: SqlStore, entity: str) -> list[Run]:
    with sql.transaction() as cur:
        recs = bookkeeping.select(
            cur, sql.dialect, RUNS, {"entity": entity}, order_by=("created_at",)
        )
    return [Run.from_record(r) for r in recs]


def partitions_of(sql: SqlStore, run_id: str) -> list[Partition]:
    with sql.transaction() as cur:
        recs = bookkeeping.select(
            cur, sql.dialect, PARTITIONS, {"run_id": run_id}, order_by=("ord",)
        )
    return [Partition.from_record(r) for r in recs]


def ensure_run(
    sql: SqlStore,
    run_id: str,
    entity: str,
    source: dict[str, Any],
    selection: Sequence[str] | None,
    plan: Callable[[], list[PlannedPartition]],
    *,
    restart: bool = False,
) -> tuple[Run, bool]:
    """The run, planned now if new (or ``restart``); also whether this call planned it.

    Several workers may start at once: the run row and all its partitions are inserted
    in one transaction with insert-if-missing, so exactly one plan is kept.
    """
    existing = get_run(sql, run_id)
    if existing is not None and not restart:
        return existing, False
    if existing is not None:
        _forget(sql, run_id)
    planned = plan()
    now = now_utc()
    d = sql.dialect
    with sql.transaction() as cur:
        fresh = bookkeeping.insert_missing(
            cur,
            d,
            RUNS,
            {
                "run_id": run_id,
                "entity": entity,
                "source": json.dumps(source),
                "selection": json.dumps(list(selection)) if selection is not None else None,
                "status": RUNNING,
                "partitions": len(planned),
                "created_at": now,
                "updated_at": now,
                "finished_at": None,
            },
        )
        if fresh:
            for i, p in enumerate(planned):
                bookkeeping.insert(
                    cur,
                    d,
                    PARTITIONS,
                    {
                        "run_id": run_id,
                        "part": p.part,
                        "entity": entity,
                        "ord": i,
                        "client": p.client,
                        "spec": p.spec,
                        "status": PENDING,
                        "est_rows": p.est_rows,
                        "rows_read": 0,
                        "rows_applied": 0,
                        "rows_stale": 0,
                        "bad_docs": 0,
                        "batches": 0,
                        "updated_at": now,
                    },
                )
            clients = {p.client: p.est_rows for p in planned if p.client}
            for client in selection or ():
                clients.setdefault(client, 0)
            for client, est in sorted(clients.items()):
                ledger.start_copy(cur, d, entity, client, run_id, est, now)
    run = get_run(sql, run_id)
    assert run is not None
    return run, fresh


def _forget(sql: SqlStore, run_id: str) -> None:
    """Drop a run's plan and checkpoints so it starts over (``--restart``)."""
    now = now_utc()
    with sql.transaction() as cur:
        pending = bookkeeping.select(
            cur, sql.dialect, PARTITIONS, {"run_id": run_id, "status": PENDING}
        )
        live = [
            p
            for p in pending
            if p["owner"]
            and p["lease_expires"]
            and p["lease_expires"] > now
            and not _owner_gone(p["owner"])
        ]
        if live:
            raise RestartRefused(
                f"run {run_id} has {len(live)} partition(s) leased by live workers "
                f"({', '.join(sorted({p['owner'] for p in live}))}); stop them before --restart"
            )
        bookkeeping.delete(cur, sql.dialect, PARTITIONS, {"run_id": run_id})
        bookkeeping.delete(cur, sql.dialect, BAD_DOCS, {"run_id": run_id})
        bookkeeping.delete(cur, sql.dialect, RUNS, {"run_id": run_id})


def finish_run_if_complete(sql: SqlStore, run_id: str, entity: str) -> bool:
    """Mark the run done when no partition is pending; its clients become copied.

    One conditional UPDATE decides (so exactly one worker finishes the run), and it is
    the transaction's first statement: SQLite cannot upgrade a read to a write while
    another connection writes.
    """
    now = now_utc()
    d = sql.dialect
    q = d.quote
    with sql.transaction() as cur:
        if not bookkeeping.update(
            cur,
            d,
            RUNS,
            {"status": DONE, "finished_at": now, "updated_at": now},
            {"run_id": run_id, "status": RUNNING},
            extra=f"NOT EXISTS (SELECT 1 FROM {q(PARTITIONS.name)} WHERE {q('run_id')} = ? "
            f"AND {q('status')} = ?)",
            extra_params=[run_id, PENDING],
        ):
            return False
        ledger.mark_copied(cur, d, entity, run_id, now)
    return True


# -- leases ---------------------------------------------------------------------------------
def new_owner(tag: str = "") -> str:
    """``host/pid/random[tag]``: unique, and tells whether a local owner has died."""
    return f"{socket.gethostname()[:150]}/{os.getpid()}/{uuid.uuid4().hex[:8]}{tag}"


def _owner_gone(owner: str) -> bool:
    """A lease held by a process of THIS machine that no longer exists."""
    host, _, rest = owner.partition("/")
    pid_text = rest.partition("/")[0]
    if host != socket.gethostname()[:150] or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state in ("Z", "X")  # a zombie has exited already
    except (FileNotFoundError, ProcessLookupError):
        return True
    except OSError:
        return False


class Leases:
    """One worker's view of a run's partitions: claim, renew, checkpoint, release."""

    def __init__(self, sql: SqlStore, run_id: str, owner: str, *, ttl_s: float = 60.0) -> None:
        self.sql, self.run_id, self.owner, self.ttl = sql, run_id, owner, timedelta(seconds=ttl_s)

    def _key(self, part: str) -> dict[str, Any]:
        return {"run_id": self.run_id, "part": part}

    def claim_next(self) -> Partition | None:
        """Take the first pending partition nobody holds (or whose holder is gone)."""
        d = self.sql.dialect
        q = d.quote
        now = now_utc()
        with self.sql.transaction() as cur:
            free = bookkeeping.select(
                cur,
                d,
                PARTITIONS,
                {"run_id": self.run_id, "status": PENDING},
                extra=f"{q('owner')} IS NULL OR {q('lease_expires')} < ?",
                extra_params=[d.to_db("datetime", now)],
                order_by=("ord",),
                limit=50,
            )
            held = bookkeeping.select(
                cur,
                d,
                PARTITIONS,
                {"run_id": self.run_id, "status": PENDING},
                extra=f"{q('owner')} LIKE ?",
                extra_params=[socket.gethostname()[:150] + "/%"],
                order_by=("ord",),
                limit=200,
            )
        candidates = [(p, None) for p in free]
        candidates += [(p, p["owner"]) for p in held if _owner_gone(p["owner"])]
        candidates.sort(key=lambda c: c[0]["ord"])
        for rec, dead_owner in candidates:
            if self._claim(rec["part"], dead_owner):
                with self.sql.transaction() as cur:
                    got = bookkeeping.select(cur, d, PARTITIONS, self._key(rec["part"]))
                return Partition.from_record(got[0])
        return None

    def _claim(self, part: str, dead_owner: str | None) -> bool:
        d = self.sql.dialect
        q = d.quote
        now = now_utc()
        values = {"owner": self.owner, "lease_expires": now + self.ttl, "updated_at": now}
        where = {**self._key(part), "status": PENDING}
        with self.sql.transaction() as cur:
            if dead_owner is not None:
                won = bookkeeping.update(cur, d, PARTITIONS, values, {**where, "owner": dead_owner})
            else:
                won = bookkeeping.update(
                    cur,
                    d,
                    PARTITIONS,
                    values,
                    where,
                    extra=f"{q('owner')} IS NULL OR {q('lease_expires')} < ?",
                    extra_params=[d.to_db("datetime", now)],
                )
            if won:
                bookkeeping.update(
                    cur, d, PARTITIONS, {"started_at": now}, {**self._key(part), "started_at": None}
                )
        return bool(won)

    def checkpoint(
        self,
        cur: Any,
        part: str,
        *,
        position: str | None,
        last_key: str | None,
        read: int,
        applied: int,
        stale: int,
        bad: int,
        done: bool,
    ) -> None:
        """In the batch's transaction: record progress and renew the lease, or raise.

        Raises :class:`LeaseLost` (so the caller's transaction rolls back) when another
        worker owns the partition now.
        """
        d = self.sql.dialect
        now = now_utc()
        values: dict[str, Any] = {
            "position": position,
            "lease_expires": now + self.ttl,
            "updated_at": now,
        }
        if last_key is not None:
            values["last_key"] = last_key
        if done:
            values.update(status=DONE, finished_at=now, owner=None, lease_expires=None)
        changed = bookkeeping.update(
            cur,
            d,
            PARTITIONS,
            values,
            {**self._key(part), "owner": self.owner, "status": PENDING},
            add={
                "rows_read": read,
                "rows_applied": applied,
                "rows_stale": stale,
                "bad_docs": bad,
                "batches": 1,
            },
        )
        if not changed:
            raise LeaseLost(f"partition {part} of run {self.run_id} is no longer ours")

    def renew(self, part: str) -> bool:
        """Keep the lease while paused; False when it was taken over meanwhile."""
        now = now_utc()
        with self.sql.transaction() as cur:
            return bool(
                bookkeeping.update(
                    cur,
                    self.sql.dialect,
                    PARTITIONS,
                    {"lease_expires": now + self.ttl, "updated_at": now},
                    {**self._key(part), "owner": self.owner, "status": PENDING},
                )
            )

    def release(self, part: str) -> None:
        """Give a partition back (stop, Ctrl-C) so another worker can go on at once."""
        now = now_utc()
        with self.sql.transaction() as cur:
            bookkeeping.update(
                cur,
                self.sql.dialect,
                PARTITIONS,
                {"owner": None, "lease_expires": None, "updated_at": now},
                {**self._key(part), "owner": self.owner},
            )

    def pending(self) -> int:
        with self.sql.transaction() as cur:
            return len(
                bookkeeping.select(
                    cur, self.sql.dialect, PARTITIONS, {"run_id": self.run_id, "status": PENDING}
                )
            )
