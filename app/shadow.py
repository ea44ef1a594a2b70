"""Background comparison of the store that served a read against the other one.

Off the request path: a read hands the rows it served to a bounded queue and returns;
a few worker threads (``shadow_max_concurrency``) re-read the same range from the
other store and compare with the foundation's ``differing_fields``. A full queue drops
the comparison and counts it, so a slow store never slows or backs up the API.

Double-writing is asynchronous, so the SQL store may trail RethinkDB by a moment: a
difference is re-read after ``shadow_recheck_delay_s`` and only one that persists is a
mismatch. Each mismatch is counted (Prometheus) and recorded in the SQL store
(``cutover_shadow_mismatches``: client, id, kind, differing fields, versions, time).
Every comparison's outcome is also counted per client, in memory, and added to the
SQL store's shadow evidence in the background (:class:`flags.evidence.EvidenceBuffer`:
every few seconds and at stop), which the gate for ``new`` reads.
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

from core.clock import now_utc
from core.config import Entity
from core.settings import Settings
from flags.evidence import Counts, EvidenceBuffer
from flags.stages import Stage
from flags.tables import MISMATCHES
from stores.mapping import Row, differing_fields
from stores.sql import SqlStore, bookkeeping

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
        self.store = store
        self._ready = False

    def _ensure_table(self) -> None:
        if not self._ready:
            self.store.ensure_schema([MISMATCHES])
            self._ready = True

    def record(self, mismatches: list[Mismatch]) -> None:
        if not mismatches:
            return
        self._ensure_table()
        with self.store.transaction() as cur:
            for m in mismatches:
                bookkeeping.insert(cur, self.store.dialect, MISMATCHES, m.__dict__)

    def recent(self, entity: str, client_id: str | None = None, limit: int = 100) -> list[Mismatch]:
        """The latest records, newest first (for tests, the CLI and the console)."""
        where: dict[str, Any] = {"entity": entity}
        if client_id is not None:
            where["client_id"] = client_id
        self._ensure_table()
        with self.store.transaction() as cur:
            rows = bookkeeping.select(
                cur,
                self.store.dialect,
                MISMATCHES,
                where,
                order_by=("detected_at",),
                descending=True,
                limit=limit,
            )
        return [Mismatch(**row) for row in rows]


class ShadowComparer:
    """A bounded queue and a few threads comparing served reads with the other store."""

    def __init__(
        self,
        reads: ReadModel,
        recorder: MismatchRecorder,
        options: Settings,
        evidence: EvidenceBuffer | None = None,
    ) -> None:
        self._reads = reads
        self._recorder = recorder
        self._options = options
        #: Per-client counts of every comparison, flushed to the recorder's store.
        self.evidence = evidence or EvidenceBuffer.from_settings(recorder.store, options)
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=options.shadow_queue_size)
        self._threads: list[threading.Thread] = []
        self._random = random.Random()

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        if self._threads:
            return
        self.evidence.start()
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
        self.evidence.stop(timeout)  # the last counts, once no comparison runs

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued comparison finished and its counts are in the store
        (tests, shutdown); False when that took too long or the store refused them."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        try:
            self.evidence.flush()
        except Exception as exc:
            log.warning("shadow evidence not written: %s", exc)
            return False
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
            finally:
                self._queue.task_done()

    def _run(self, job: _Job) -> None:
        """Compare, count the outcome (Prometheus and evidence), record the mismatches."""
        entity = job.entity.name
        try:
            diffs = self._compare(job)
        except Exception as exc:
            COMPARISONS.labels(entity, job.stage.value, "error").inc()
            self._count(job, Counts(errors=1))
            log.warning("shadow comparison failed: %s", exc)
            return
        if not diffs:
            COMPARISONS.labels(entity, job.stage.value, "same").inc()
            self._count(job, Counts(comparisons=1))
            return
        COMPARISONS.labels(entity, job.stage.value, "mismatch").inc()
        self._count(job, Counts(comparisons=1, mismatches=1, mismatched_items=len(diffs)))
        self._record(job, diffs)

    def _count(self, job: _Job, counts: Counts) -> None:
        self.evidence.count(job.entity.name, job.client_id, job.stage.value, counts)

    def _record(
        self, job: _Job, diffs: dict[str, tuple[str, list[str], Row | None, Row | None]]
    ) -> None:
        """Each differing item, as a record in the SQL store and a Prometheus count."""
        entity = job.entity.name
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
        try:
            self._recorder.record(records)
        except Exception as exc:  # counted above; only the details are lost
            log.warning("shadow mismatches of %s not recorded: %s", job.client_id, exc)

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

    def _compare(self, job: _Job) -> dict[str, tuple[str, list[str], Row | None, Row | None]]:
        """The differences that persist after the re-check (empty: the stores agree)."""
        other_name: StoreName = "new" if job.served == "old" else "old"
        diffs = self._diffs(job, job.rows, self._other_rows(job, other_name))
        if diffs:
            time.sleep(self._options.shadow_recheck_delay_s)
            keys = list(diffs)
            served_now = self._reads.rows_for(job.served, job.entity, job.client_id, keys)
            other_now = self._reads.rows_for(other_name, job.entity, job.client_id, keys)
            diffs = self._diffs(job, served_now, other_now)
        return diffs
