"""The backfill loop: copy old documents into the SQL store, batch by batch.

Per batch: read a page from the partition's position -> map each document with
``row_from_document`` (an export is mostly decoded a batch at a time by
``block_decoder``, its fast path; a document that cannot be mapped is counted and
recorded with its key, never dropped silently) -> in ONE transaction:
``SqlStore.apply`` (the shared version-guarded write path, so a backfilled row never
overwrites a newer double-written version and never resurrects a tombstone), the
bad-document records, the ledger counts, the checkpoint (which also renews the
partition's lease) and the pause flag (a paused batch rolls back) -> throttle. A crash
loses at most the batches in flight, which are then copied again; copying a row twice
changes nothing because of the version rules.

Reading and mapping happen in a *producer* (``producer.py``): for a large copy, a
child process per worker that prepares the next batches while the worker commits two
at a time, in order (``pipeline.py``).
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import pyodbc

from core.clock import now_utc
from core.config import Entity
from stores.rethink import RethinkUnavailable
from stores.sql import SqlStore, StoreUnavailable, bookkeeping

from . import control, ledger
from .documents import BadDoc, map_documents
from .partitions import (
    DONE,
    LeaseLost,
    Leases,
    Partition,
    Run,
    ensure_run,
    finish_run_if_complete,
    get_run,
    new_owner,
    partitions_of,
    run_id_for,
)
from .pipeline import Abandoned, InOrderCommits, Turn
from .producer import (
    PROCESS_THRESHOLD,
    Producer,
    ReadyBatch,
    long_lived_heap_frozen,
    producer_for,
)
from .progress import Progress
from .refusals import refused_for_data, split_refused
from .sources import Source, SourceError
from .tables import BAD_DOCS

T = TypeVar("T")

#: Rows per second read from the old store by default: modest next to live traffic.
DEFAULT_RATE = 2000.0
#: Documents per batch, and so per transaction and checkpoint. Each batch costs a few
#: round trips of bookkeeping and a commit, so 2,000 rather than 1,000 copied 0.89 of
#: the time on the benchmark (median of 8 alternating pairs); it keeps a pause or a
#: crash to at most 2,000 documents copied again, one second at the default rate.
DEFAULT_BATCH = 2000


@dataclass(frozen=True)
class Options:
    batch: int = DEFAULT_BATCH
    rate: float = DEFAULT_RATE  # rows/s per process; 0 = unthrottled
    workers: int = 1
    clients: tuple[str, ...] | None = None
    active_first: bool = False
    priority: tuple[str, ...] = ()  # clients to copy first, in this order
    restart: bool = False
    lease_ttl_s: float = 60.0
    poll_s: float = 1.0  # pause polling and waiting for partitions leased elsewhere
    max_retries: int = 10
    retry_base_s: float = 0.5
    wait_for_others: bool = True  # stay until the run completes, to take over dead leases
    #: Prepare batches in a child process per worker (None: when the run is large).
    processes: bool | None = None
    #: With a reader process: prepare batches in the worker while the process starts.
    reader_warm_up: bool = True
    #: Batches committing at once per worker (None: see ``Backfill._commit_depth``).
    commit_depth: int | None = None


@dataclass
class Summary:
    run_id: str
    entity: str
    source: dict[str, Any]
    dry_run: bool = False
    partitions: int = 0
    partitions_done: int = 0
    read: int = 0  # documents read from the old store (whole run)
    applied: int = 0  # rows that changed the SQL store (a dry run: rows it would write)
    stale: int = 0  # rows the SQL store already had at the same or a newer version
    bad: list[BadDoc] = field(default_factory=list)
    session_rows: int = 0
    seconds: float = 0.0
    complete: bool = False
    stopped: bool = False
    already_complete: bool = False

    def lines(self) -> list[str]:
        mode = " (dry run: nothing written)" if self.dry_run else ""
        rate = self.session_rows / self.seconds if self.seconds > 0 else 0.0
        state = (
            "complete"
            if self.complete
            else "stopped; run the same command again to resume"
            if self.stopped
            else "incomplete"
        )
        out = [
            f"backfill {self.entity}{mode}: {state}",
            f"  run {self.run_id}, source {json.dumps(self.source)}",
            f"  partitions {self.partitions_done}/{self.partitions} done",
            f"  documents read {self.read:,}; rows to write {self.applied:,}; "
            f"bad documents {len(self.bad):,}"
            if self.dry_run
            else f"  documents read {self.read:,}; rows applied {self.applied:,}; "
            f"already newer in SQL {self.stale:,}; bad documents {len(self.bad):,}",
            f"  this session: {self.session_rows:,} documents in {self.seconds:,.1f} s "
            f"({rate:,.0f}/s)",
        ]
        if self.already_complete:
            out.insert(1, "  this run had already completed; use --restart to copy again")
        if self.bad:
            out.append("  bad documents (not copied; fix them in the old store and re-run):")
            out += [f"    {b.ref}: {b.error}" for b in self.bad]
        return out


class Throttle:
    """Paces reads to ``rate`` documents per second over the process (all workers)."""

    def __init__(self, rate: float, stop: threading.Event) -> None:
        self.rate, self.stop = rate, stop
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self, n: int) -> None:
        if self.rate <= 0 or n <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self._next = max(self._next, now) + n / self.rate
            delay = self._next - now - n / self.rate  # this batch's share is already spent
        if delay > 0:
            self.stop.wait(delay)


class Backfill:
    """Copies one entity from a source into the SQL store, resumable and throttled."""

    def __init__(
        self,
        sql: SqlStore,
        source: Source,
        entity: Entity,
        options: Options | None = None,
        *,
        progress: Callable[[str, int | None, int], Progress] | None = None,
        on_batch: Callable[[Partition, ReadyBatch], None] | None = None,
        emit: Callable[[str], None] | None = None,
    ) -> None:
        self.sql, self.source, self.entity = sql, source, entity
        self.opt = options or Options()
        self._progress_factory = progress or Progress
        self.on_batch = on_batch
        self.emit = emit or (lambda line: None)
        self._stop = threading.Event()
        self.throttle = Throttle(self.opt.rate, self._stop)
        self.run_id = run_id_for(entity.name, source.identity(entity), self.opt.clients)
        self._errors: list[BaseException] = []
        self._session = 0
        self._lock = threading.Lock()
        self.progress: Progress | None = None

    def stop(self) -> None:
        """Finish the current batches, give the leases back and return (Ctrl-C)."""
        self._stop.set()

    # -- the run ------------------------------------------------------------------------
    def run(self) -> Summary:
        self._retry(lambda: ledger.ensure_tables(self.sql))
        run, _ = self._retry(
            lambda: ensure_run(
                self.sql,
                self.run_id,
                self.entity.name,
                self.source.describe(),
                self.opt.clients,
                lambda: self.source.plan(
                    self.entity,
                    self.opt.clients,
                    workers=self.opt.workers,
                    active_first=self.opt.active_first,
                    priority=self.opt.priority,
                ),
                restart=self.opt.restart,
            )
        )
        started = time.monotonic()
        if run.status == DONE:
            summary = self._summary(run, started)
            summary.already_complete = True
            return summary
        parts = partitions_of(self.sql, self.run_id)
        total = sum(max(p.est_rows, p.rows_read) for p in parts)
        done = sum(p.rows_read for p in parts)
        self.progress = self._progress_factory(f"backfill {self.entity.name}", total or None, done)
        processes = self.opt.processes
        if processes is None:
            processes = total - done >= PROCESS_THRESHOLD
        threads = [
            threading.Thread(
                target=self._worker, args=(i, processes), name=f"backfill-{i}", daemon=True
            )
            for i in range(max(1, self.opt.workers))
        ]
        with long_lived_heap_frozen():
            try:
                for t in threads:
                    t.start()
                for t in threads:
                    while t.is_alive():
                        t.join(0.2)
            except KeyboardInterrupt:
                self._stop.set()
                for t in threads:
                    t.join()
            finally:
                self.progress.close()
        if self._errors:
            raise self._errors[0]
        refreshed = get_run(self.sql, self.run_id) or run
        return self._summary(refreshed, started)

    def _summary(self, run: Run, started: float) -> Summary:
        parts = partitions_of(self.sql, self.run_id)
        with self.sql.transaction() as cur:
            bad = bookkeeping.select(
                cur, self.sql.dialect, BAD_DOCS, {"run_id": self.run_id}, order_by=("ref",)
            )
        return Summary(
            run_id=self.run_id,
            entity=self.entity.name,
            source=self.source.describe(),
            partitions=len(parts),
            partitions_done=sum(p.status == DONE for p in parts),
            read=sum(p.rows_read for p in parts),
            applied=sum(p.rows_applied for p in parts),
            stale=sum(p.rows_stale for p in parts),
            bad=[BadDoc(b["ref"], b["doc_key"], b["client"], b["error"]) for b in bad],
            session_rows=self._session,
            seconds=time.monotonic() - started,
            complete=run.status == DONE,
            stopped=self._stop.is_set() and run.status != DONE,
        )

    def _worker(self, index: int, processes: bool) -> None:
        leases = Leases(self.sql, self.run_id, new_owner(f"/w{index}"), ttl_s=self.opt.lease_ttl_s)
        producer: Producer | None = None
        commits: InOrderCommits[ReadyBatch] = InOrderCommits(
            self._commit_depth(processes),
            name=f"backfill-{index}-commit",
            wait_s=self.opt.lease_ttl_s,
        )
        try:
            producer = producer_for(
                self.source,
                self.sql.encoder(self.entity),
                self.opt.batch,
                in_process=not processes,
                warm_up=self.opt.reader_warm_up,
                name=f"cutover-backfill-reader-{index}",
            )
            while not self._stop.is_set():
                part = self._retry(leases.claim_next)
                if part is None:
                    if self._retry(leases.pending) == 0 or not self.opt.wait_for_others:
                        break
                    self._note("waiting for partitions leased by other workers")
                    self._stop.wait(self.opt.poll_s)
                    continue
                self._note("")
                self._process(producer, commits, leases, part)
            if not self._stop.is_set():
                self._retry(lambda: finish_run_if_complete(self.sql, self.run_id, self.entity.name))
        except _Stopped:
            return
        except BaseException as exc:  # surfaced by run() in the main thread
            self._errors.append(exc)
            self._stop.set()
        finally:
            commits.close()
            if producer is not None:
                producer.close()

    def _commit_depth(self, processes: bool) -> int:
        """Batches committing at once: two when a reader process prepares them.

        Not when batches are prepared in this thread (small runs): that Python work
        holds the GIL, which the commit's driver calls keep asking back. Not on SQLite
        either, whose writers take turns anyway.
        """
        if self.sql.dialect.name == "sqlite":
            return 1  # its second transaction would only wait for the write lock
        if self.opt.commit_depth is not None:
            return self.opt.commit_depth
        return 2 if processes else 1

    def _note(self, text: str) -> None:
        if self.progress is not None:
            self.progress.set_note(text)

    def _process(
        self,
        producer: Producer,
        commits: InOrderCommits[ReadyBatch],
        leases: Leases,
        part: Partition,
    ) -> None:
        """Copy one partition, batch by batch, each batch's checkpoint in its commit.

        The next batch is requested before this one commits, so a producer in a child
        process prepares it meanwhile, and with a reader process two batches commit at
        once (``pipeline.py``). Stop and pause are honoured between commits: a batch
        taken but not committed is simply read again on resume.
        """
        try:
            self._copy(producer, commits, leases, part)
        except BaseException:
            # An orderly failure gives the partition back, so "run again" resumes at once
            # instead of waiting out the lease (a crash still waits: nobody is left),
            # once the batches still committing are done.
            commits.drain()
            with suppress(Exception):
                leases.release(part.part)
            raise

    def _copy(
        self,
        producer: Producer,
        commits: InOrderCommits[ReadyBatch],
        leases: Leases,
        part: Partition,
    ) -> None:
        clients = frozenset(self.opt.clients) if self.opt.clients is not None else None
        committed = part.position
        producer.open(part.spec, committed, clients)
        paused: bool | None = None  # as read with the last commit; None: ask the store
        ended = False  # the partition's last batch is taken
        reread = False  # batches taken after `committed` were dropped: read them again
        failures = 0  # store failures in a row
        while True:
            if reread and not commits.busy:
                producer.open(part.spec, committed, clients)
                reread = ended = False
            if commits.room and not (ended or reread or paused is not False or self._stop.is_set()):
                try:
                    ready = producer.take()
                except (RethinkUnavailable, OSError) as exc:
                    self._backoff(exc, "read")
                    reread = True
                    continue
                if not ready.exhausted:
                    producer.request()
                ended = ready.exhausted
                commit = functools.partial(self._commit, leases, part, ready)
                commits.submit(ready, commit, keys=ready.rows.key_range)
                continue
            if not commits.busy:
                if ended:
                    return
                if not self._may_go_on(leases, part, paused):
                    return
                paused = False
                continue
            try:
                ready = commits.next_committed()
            except _Paused:
                commits.drain()  # the later batches roll back too
                paused, reread = True, True
                continue
            except LeaseLost as exc:
                commits.drain()
                self.emit(f"{exc}; leaving it to its new owner")
                return
            except (StoreUnavailable, pyodbc.IntegrityError, Abandoned) as exc:
                commits.drain()
                failures += 1
                if failures > self.opt.max_retries:
                    raise
                self._backoff(exc, "store", failures)
                reread, paused = True, None
                continue
            except BaseException:
                commits.drain()
                raise
            failures, paused = 0, False
            committed = ready.position
            with self._lock:
                self._session += ready.read
            if self.progress is not None:
                self.progress.advance(ready.read)
            if self.on_batch is not None:
                self.on_batch(part, ready)
            self.throttle.wait(ready.read)

    def _may_go_on(self, leases: Leases, part: Partition, paused: bool | None) -> bool:
        """False when stopping (the lease is given back) or stopped while paused."""
        if self._stop.is_set():
            leases.release(part.part)
            return False
        return paused is False or self._wait_while_paused(leases, part)

    def _commit(self, leases: Leases, part: Partition, ready: ReadyBatch, turn: Turn) -> None:
        """Rows, bad-document records, ledger counts and checkpoint: one transaction.

        The rows are written once the batch before has written its own, the rest once
        that batch has committed (see ``pipeline.py``). Last, the pause flag is read in
        the same transaction: when set, the batch rolls back (raising :class:`_Paused`)
        and is read again on resume, so a pause takes effect at once however many
        batches are in flight.

        When the store refuses some of the rows for their data, those rows are found
        (``refusals.py``) and the batch commits without them, each recorded as a bad
        document; a store failure is raised as it is.
        """
        turn.wait_to_write()
        try:
            self._commit_once(leases, part, ready, turn)
        except Exception as exc:
            if not refused_for_data(exc):
                raise
            without = self._without_refused(ready)
            if without is None:
                raise
            self._commit_once(leases, part, without, turn)

    def _without_refused(self, ready: ReadyBatch) -> ReadyBatch | None:
        """``ready`` without the rows the store refuses (bad documents instead); None
        when it refuses none of them on their own (the refusal was not theirs)."""
        rows, refused = split_refused(self.sql, self.entity, ready.rows)
        if not refused:
            return None
        counts = dict(ready.counts)
        for b in refused:
            if b.client in counts:
                counts[b.client] -= 1
        counts = {c: n for c, n in counts.items() if n}
        return replace(ready, rows=rows, bad=[*ready.bad, *refused], counts=counts)

    def _commit_once(self, leases: Leases, part: Partition, ready: ReadyBatch, turn: Turn) -> None:
        d = self.sql.dialect
        with self.sql.transaction() as cur:
            result = self.sql.apply(self.entity, ready.rows, cursor=cur)
            turn.rows_written()
            turn.wait_for_previous()
            now = now_utc()
            for b in ready.bad:
                bookkeeping.insert_missing(
                    cur,
                    d,
                    BAD_DOCS,
                    {
                        "run_id": self.run_id,
                        "ref": b.ref,
                        "entity": self.entity.name,
                        "doc_key": b.key,
                        "client": b.client,
                        "error": b.error,
                        "recorded_at": now,
                    },
                )
            if ready.counts:
                ledger.add_rows(cur, d, self.entity.name, self.run_id, ready.counts, now)
            leases.checkpoint(
                cur,
                part.part,
                position=ready.position,
                last_key=ready.last_key,
                read=ready.read,
                applied=result.applied,
                stale=result.stale,
                bad=len(ready.bad),
                done=ready.exhausted,
            )
            if ready.exhausted and part.client is not None:
                ledger.mark_copied(cur, d, self.entity.name, self.run_id, now, client=part.client)
            if control.is_paused(self.sql, self.entity.name, cursor=cur):
                raise _Paused()

    def _wait_while_paused(self, leases: Leases, part: Partition) -> bool:
        """Block while the entity is paused, keeping the lease; False to give up."""
        noted = False
        while self._retry(lambda: control.is_paused(self.sql, self.entity.name)):
            if not noted:
                self._note("paused (cutover backfill resume)")
                self.emit(f"backfill {self.entity.name}: paused")
                noted = True
            if self._stop.wait(self.opt.poll_s):
                leases.release(part.part)
                return False
            if not self._retry(lambda: leases.renew(part.part)):
                return False
        if noted:
            self._note("")
            self.emit(f"backfill {self.entity.name}: resumed")
        return True

    # -- retries --------------------------------------------------------------------------
    def _retry(self, call: Callable[[], T]) -> T:
        """Run ``call``, retrying transient store errors with exponential backoff."""
        attempt = 0
        while True:
            try:
                return call()
            except (StoreUnavailable, RethinkUnavailable, pyodbc.IntegrityError) as exc:
                attempt += 1
                if attempt > self.opt.max_retries:
                    raise
                self._backoff(exc, "store", attempt)

    def _backoff(self, exc: BaseException, what: str, attempt: int = 1) -> None:
        """Wait before retrying ``exc``; a store that refused the login (not retryable)
        fails the run at once instead, since waiting cannot help."""
        if not getattr(exc, "retryable", True):
            raise exc
        delay = min(30.0, self.opt.retry_base_s * 2 ** (attempt - 1))
        self.emit(f"backfill {self.entity.name}: {what} failed ({exc}); retrying in {delay:.1f} s")
        if self._stop.wait(delay):
            raise _Stopped()

    # -- dry run --------------------------------------------------------------------------
    def dry_run(self) -> Summary:
        """Read, map and prepare everything as :meth:`run` would, write nothing.

        The batches come from the same producer as a run's (document by document, a
        block at a time, in a reader process for a large copy), so a dry run counts
        and reports every document, bad ones included, exactly as a run would. Only
        what the store itself would refuse at write time (``refusals.py``) it cannot
        know.
        """
        started = time.monotonic()
        plan = self.source.plan(
            self.entity,
            self.opt.clients,
            workers=1,
            active_first=self.opt.active_first,
            priority=self.opt.priority,
        )
        clients = frozenset(self.opt.clients) if self.opt.clients is not None else None
        summary = Summary(
            self.run_id,
            self.entity.name,
            self.source.describe(),
            dry_run=True,
            partitions=len(plan),
        )
        total = sum(p.est_rows for p in plan)
        processes = self.opt.processes
        if processes is None:
            processes = total >= PROCESS_THRESHOLD
        progress = self._progress_factory(f"dry run {self.entity.name}", total or None, 0)
        producer: Producer | None = None
        try:
            producer = producer_for(
                self.source,
                self.sql.encoder(self.entity),
                self.opt.batch,
                in_process=not processes,
                warm_up=self.opt.reader_warm_up,
                name="cutover-backfill-dry-run-reader",
            )
            with long_lived_heap_frozen():
                for planned in plan:
                    if self._stop.is_set():
                        break
                    producer.open(planned.spec, None, clients)
                    self._dry_partition(producer, summary, progress)
        finally:
            if producer is not None:
                producer.close()
            progress.close()
        summary.seconds = time.monotonic() - started
        summary.complete = summary.partitions_done == summary.partitions
        summary.stopped = self._stop.is_set()
        return summary

    def _dry_partition(self, producer: Producer, summary: Summary, progress: Progress) -> None:
        """Every batch of the partition ``producer`` has open, counted into ``summary``."""
        while not self._stop.is_set():
            ready = producer.take()
            if not ready.exhausted:
                producer.request()
            summary.read += ready.read
            summary.applied += ready.rows.received
            summary.bad.extend(ready.bad)
            summary.session_rows += ready.read
            progress.advance(ready.read)
            if ready.exhausted:
                summary.partitions_done += 1
                return
            self.throttle.wait(ready.read)


class _Paused(Exception):
    """Raised in a batch's transaction (rolling it back) when the entity is paused."""


class _Stopped(Exception):
    """Raised out of a backoff wait when the run is being stopped."""


def read_clients_file(path: str) -> list[str]:
    """Client ids, one per line; blank lines and ``#`` comments ignored, order kept."""
    with open(path, encoding="utf-8") as fh:
        return _unique(line.split("#", 1)[0].strip() for line in fh)


def _unique(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        if item:
            seen.setdefault(item, None)
    return list(seen)


__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_RATE",
    "Backfill",
    "BadDoc",
    "Options",
    "SourceError",
    "Summary",
    "Throttle",
    "map_documents",
    "read_clients_file",
]
