"""Background comparison of the store that served a read against the other one.

Off the request path: a read hands the rows it served to a bounded queue and returns;
a few worker threads (``shadow_max_concurrency``) re-read the same range from the
other store and compare with the foundation's ``differing_fields``. A full queue drops
the comparison and counts it, so a slow store never slows or backs up the API.

Double-writing is asynchronous, so the SQL store may trail RethinkDB by a moment: a
difference is re-read after ``shadow_recheck_delay_s`` and only one that persists is a
mismatch. Each mismatch is counted (Prometheus) and recorded in the SQL store
(``cutover_shadow_mismatches``: client, id, kind, differing fields, versions, time).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client import Counter

from cutover.clock import now_utc
from cutover.config import Entity
from cutover.settings import Settings
from flags.stages import Stage
from flags.tables import MISMATCHES
from stores.mapping import Row, differing_fields
from stores.sql import SqlStore

from .reads import ReadModel, StoreName

log = logging.getLogger(__name__)

COMPARISONS = Counter(
    "cutover_shadow_comparisons_total",
    "Background comparisons run, by outcome (same, mismatch, error)",
    ["entity", "stage", "outcome"],
)
MISMATCH_COUNT = Counter(
    "cutover_shadow_mismatches_total",
    "Items that differ between the stores after a re-check, by kind",
    ["entity", "kind"],
)
DROPPED = Counter(
    "cutover_shadow_dropped_total",
    "Comparisons not run because the queue was full",
    ["entity"],
)


@dataclass(frozen=True)
class Mismatch:
    entity: str
    client_id: str
    item_key: str
    kind: str  # missing_in_new | missing_in_old | version | fields
    fields: list[str]
    old_version: int | None
    new_version: int | None
    stage: str
    detected_at: datetime = field(default_factory=now_utc)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


def compare_rows(entity: Entity, old: Row | None, new: Row | None) -> tuple[str, list[str]] | None:
    """How two live rows of one key differ, or None when they agree."""
    if old is None and new is None:
        return None
    if new is None:
        return "missing_in_new", []
    if old is None:
        return "missing_in_old", []
    fields = differing_fields(entity, old, new)
    if old.version != new.version:
        return "version", fields
    return ("fields", fields) if fields else None


@dataclass(frozen=True)
class _Job:
    entity: Entity
    client_id: str
    stage: Stage
    served: StoreName
    rows: dict[str, Row]
    #: Keys compared: the served page's range, or the one requested key.
    after: str | None = None
    upper: str | None = None
    limit: int = 0
    key: str | None = None


class MismatchRecorder:
    """Inserts mismatch records into the SQL store (creating the table once)."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store
        self._ready = False

    def record(self, mismatches: list[Mismatch]) -> None:
        if not mismatches:
            return
        if not self._ready:
            self._store.ensure_schema([MISMATCHES])
            self._ready = True
        d = self._store.dialect
        q = d.quote
        names = [c.name for c in MISMATCHES.columns]
        sql = (
            f"INSERT INTO {q(MISMATCHES.name)} ({', '.join(q(n) for n in names)}) "
            f"VALUES ({', '.join('?' for _ in names)})"
        )
        with self._store.transaction() as cur:
            for m in mismatches:
                values: dict[str, Any] = {**m.__dict__}
                cur.execute(sql, [d.to_db(c.kind, values[c.name]) for c in MISMATCHES.columns])

    def recent(self, entity: str, client_id: str | None = None, limit: int = 100) -> list[Mismatch]:
        """The latest records, newest first (for tests, the CLI and the console)."""
        d = self._store.dialect
        q = d.quote
        names = [c.name for c in MISMATCHES.columns]
        where, params = [f"{q('entity')} = ?"], [entity]
        if client_id is not None:
            where.append(f"{q('client_id')} = ?")
            params.append(client_id)
        sql = d.limit(
            f"SELECT {', '.join(q(n) for n in names)} FROM {q(MISMATCHES.name)} "
            f"WHERE {' AND '.join(where)} ORDER BY {q('detected_at')} DESC",
            limit,
        )
        if not self._ready:
            self._store.ensure_schema([MISMATCHES])
            self._ready = True
        with self._store.transaction() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
        return [
            Mismatch(
                **{c.name: d.from_db(c.kind, v) for c, v in zip(MISMATCHES.columns, r, strict=True)}
            )
            for r in rows
        ]


class ShadowComparer:
    """A bounded queue and a few threads comparing served reads with the other store."""

    def __init__(self, reads: ReadModel, recorder: MismatchRecorder, options: Settings) -> None:
        self._reads = reads
        self._recorder = recorder
        self._options = options
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=options.shadow_queue_size)
        self._threads: list[threading.Thread] = []
        self._random = random.Random()

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        if self._threads:
            return
        for n in range(self._options.shadow_max_concurrency):
            thread = threading.Thread(target=self._work, name=f"shadow-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        for _ in self._threads:
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                break
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued comparison finished (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    # -- the request side -------------------------------------------------------------
    def _sampled(self, stage: Stage) -> bool:
        rate = {
            Stage.SHADOW: self._options.shadow_sample_rate,
            Stage.NEW: self._options.new_compare_sample_rate,
        }.get(stage, 0.0)
        return rate > 0 and (rate >= 1 or self._random.random() < rate)

    def _submit(self, job: _Job) -> None:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            DROPPED.labels(job.entity.name).inc()

    def page_served(
        self,
        stage: Stage,
        served: StoreName,
        entity: Entity,
        client_id: str,
        after: str | None,
        limit: int,
        rows: list[Row],
        next_after: str | None,
    ) -> None:
        """Queue a comparison of a served page (if sampled); never blocks, never raises."""
        if not self._sampled(stage):
            return
        self._submit(
            _Job(
                entity,
                client_id,
                stage,
                served,
                {r.key: r for r in rows},
                after=after,
                upper=next_after,
                limit=limit,
            )
        )

    def item_served(
        self,
        stage: Stage,
        served: StoreName,
        entity: Entity,
        client_id: str,
        key: str,
        row: Row | None,
    ) -> None:
        if not self._sampled(stage):
            return
        self._submit(_Job(entity, client_id, stage, served, {row.key: row} if row else {}, key=key))

    # -- the worker side --------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._run(job)
            except Exception as exc:
                if job is not None:
                    COMPARISONS.labels(job.entity.name, job.stage.value, "error").inc()
                log.warning("shadow comparison failed: %s", exc)
            finally:
                self._queue.task_done()

    def _other_rows(self, job: _Job, other: StoreName) -> dict[str, Row]:
        if job.key is not None:
            return self._reads.rows_for(other, job.entity, job.client_id, [job.key])
        page = self._reads.page(other, job.entity, job.client_id, job.after, job.limit)
        found = {r.key: r for r in page.rows if job.upper is None or r.key <= job.upper}
        missing = [k for k in job.rows if k not in found]
        if missing:  # beyond the other store's page (it holds extra keys): look them up
            found.update(self._reads.rows_for(other, job.entity, job.client_id, missing))
        return found

    def _diffs(
        self, job: _Job, served: dict[str, Row], other: dict[str, Row]
    ) -> dict[str, tuple[str, list[str], Row | None, Row | None]]:
        out = {}
        for key in sorted(set(served) | set(other)):
            old, new = (served.get(key), other.get(key))
            if job.served == "new":
                old, new = new, old
            diff = compare_rows(job.entity, old, new)
            if diff is not None:
                out[key] = (*diff, old, new)
        return out

    def _run(self, job: _Job) -> None:
        other_name: StoreName = "new" if job.served == "old" else "old"
        diffs = self._diffs(job, job.rows, self._other_rows(job, other_name))
        if diffs:
            time.sleep(self._options.shadow_recheck_delay_s)
            keys = list(diffs)
            served_now = self._reads.rows_for(job.served, job.entity, job.client_id, keys)
            other_now = self._reads.rows_for(other_name, job.entity, job.client_id, keys)
            diffs = self._diffs(job, served_now, other_now)
        entity = job.entity.name
        if not diffs:
            COMPARISONS.labels(entity, job.stage.value, "same").inc()
            return
        COMPARISONS.labels(entity, job.stage.value, "mismatch").inc()
        records = [
            Mismatch(
                entity,
                job.client_id,
                key,
                kind,
                fields,
                old.version if old else None,
                new.version if new else None,
                job.stage.value,
            )
            for key, (kind, fields, old, new) in diffs.items()
        ]
        for m in records:
            MISMATCH_COUNT.labels(entity, m.kind).inc()
        self._recorder.record(records)
