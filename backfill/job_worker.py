"""``cutover jobs run``: pull per-client jobs from Pub/Sub and run them.

One job = one client of one entity: its backfill through the backfill's own
version-guarded, checkpointed path (:class:`~backfill.runner.Backfill` with that one
client), then its full verification (:class:`~backfill.verify.Verifier`, which records
the result in the ledger). The message is acked only once both are recorded.

**Pulling (flow control).** Unary Pull, asking for as many messages as this process
has free job slots (``[jobs] concurrency``), never more. Streaming pull is not used:
its flow control is a request the server may ignore (the local cloudbox server sends
up to 1,000 messages at once), and the client library then holds every job it
received on this one process while other workers idle. With Pull, each worker takes
only what it can start, on any server.

**Leases.** While a job runs, a keeper thread extends its message's ack deadline by
``ack_deadline_s`` every third of it, and renews the job's lease row in the SQL store
every third of ``lease_ttl_s``. Both are bounded: a delivery is extended for at most
``max_lease_s`` (then the job is stopped at its next batch and handed back; the
redelivery resumes from its checkpoint), and a worker that dies is redelivered within
``ack_deadline_s`` and its lease row taken over ``lease_ttl_s`` after its last renewal.

**One worker per client.** A job first takes its client's lease row
(:func:`backfill.jobs.acquire`: one conditional UPDATE, so one winner). A duplicate or
redelivered message for a client whose job runs elsewhere waits, holding its message,
until that job ends (then it finds the client migrated and finishes at once) or its
lease expires (then it takes over and resumes the copy from the checkpoint). Inside,
the backfill's partitions have leases of their own, checked by every batch's commit,
so even a worker that lost its job lease (a stall longer than the TTL) cannot commit
a batch of a partition someone else took over.

**Unchanged.** A client is *migrated and unchanged* when its ledger entry is
``verified`` (its backfill completed and its latest full verification was clean;
verification moves it back to ``copied`` the moment it finds a difference) and that
copy came from the same source data this worker reads (the ledger's run is a run of
this source's identity: same live table, or the same export file). Such a job
finishes at once. A client already copied from this source whose latest verification
was not unclean is only verified; otherwise it is copied (from its checkpoint, or
again from the start when its earlier copy completed) and verified.

**Failures.** A job that fails (documents the mapping rejects, differences left after
verification, a source that cannot be read) is retried with backoff: its message's
deadline is set to the backoff, so the server redelivers it then, on any server (the
local one ignores retry policies). Once ``max_delivery_attempts`` is reached (the
larger of the message's delivery attempt and the client's count of failed runs:
Google reports delivery attempts only with a dead-letter policy) the job goes to the
failure log (``cutover subs failures list|show|replay``, the console) with its error,
and is acked. A bad job message (not JSON, another kind or version, an unknown entity)
goes there at once, with the reason. A store that is down is not the job's fault: the
job is handed back with backoff and not counted.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

import pyodbc
from google.api_core import exceptions as gexc

from core import pubsub
from core.config import Entity, Jobs
from core.redaction import redact
from stores.rethink import RethinkUnavailable
from stores.runtime import Runtime
from stores.sql import StoreUnavailable

from . import jobs, ledger
from .ledger import LedgerEntry
from .partitions import DONE, RestartRefused, get_run, new_owner, run_id_for
from .producer import ReaderGone
from .progress import Progress
from .runner import DEFAULT_BATCH, DEFAULT_RATE, Backfill, Options
from .sources import Source, SourceError
from .verify import Verifier

log = logging.getLogger("cutover.jobs")

#: How a settled message ended when it was acked (the others come back).
_ACKED = (jobs.OUT_DONE, jobs.OUT_UNCHANGED, "failed", "bad-message")
#: Seconds a pull waits for messages on servers that hold the call open.
_PULL_TIMEOUT_S = 5.0


class JobFailed(RuntimeError):
    """The job did not reach a clean, verified client; the message says why.

    ``final``: this was its last attempt (it goes to the failure log).
    """

    def __init__(self, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


class HandBack(RuntimeError):
    """The job stops before it ends (stopping, lease time spent, store down): its
    message goes back to be redelivered, nothing is counted against it."""


@dataclass(frozen=True)
class JobOptions:
    """How this process runs its jobs (the pacing that is not in ``[jobs]``)."""

    rate: float = DEFAULT_RATE  # documents/s read per copy; 0 = unthrottled
    batch: int = DEFAULT_BATCH
    recheck_delay_s: float = 5.0  # verification's wait before re-reading in-flight keys
    poll_s: float = 1.0  # idle wait between empty pulls, and between looks at a busy lease
    max_jobs: int | None = None  # stop after this many messages are settled
    #: Per copy: a reader process (None: the backfill's own rule, by size).
    processes: bool | None = None


@dataclass
class _InHand:
    """One pulled message while this process holds it."""

    ack_id: str
    received: float
    stop: threading.Event = field(default_factory=threading.Event)
    settled: bool = False  # acked or rescheduled: never extended again
    lease: tuple[str, str, str] | None = None  # (entity, client, attempt_id) once acquired
    backfill: Backfill | None = None

    def hand_back(self) -> None:
        self.stop.set()
        if self.backfill is not None:
            self.backfill.stop()


def _quiet(title: str, total: int | None, done: int) -> Progress:
    return Progress(title, total, done, tty=False, interval_s=60, emit=log.info)


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, StoreUnavailable | RethinkUnavailable | pyodbc.OperationalError)


class JobRunner:
    """Runs one job to its end: unchanged, done, or an exception (see the module)."""

    def __init__(self, runtime: Runtime, source: Source, options: JobOptions, owner: str) -> None:
        self.runtime, self.source, self.opt, self.owner = runtime, source, options, owner
        self.sql = runtime.sql
        self.jobs_cfg: Jobs = runtime.cfg.jobs_or_error()

    # -- the rules ---------------------------------------------------------------------
    def same_source(self, entity: Entity, entry: LedgerEntry) -> bool:
        """The entry's copy came from the data this runner reads (same source identity)."""
        if entry.run_id is None:
            return False
        run = get_run(self.sql, entry.run_id)
        if run is None:
            return False
        identity = self.source.identity(entity)
        return run_id_for(entity.name, identity, run.selection) == entry.run_id

    def unchanged(self, entity: Entity, client: str) -> bool:
        entry = ledger.client_status(self.sql, entity.name, client)
        return (
            entry is not None and entry.state == ledger.VERIFIED and self.same_source(entity, entry)
        )

    def needs_copy(self, entity: Entity, entry: LedgerEntry | None) -> bool:
        return not (
            entry is not None
            and entry.copy_complete
            and entry.last_verification_clean is not False
            and self.same_source(entity, entry)
        )

    # -- one job -------------------------------------------------------------------------
    def run(self, job: jobs.Job, hand: _InHand, message_id: str, delivery_attempt: int) -> str:
        """The outcome (``done`` or ``unchanged``); raises JobFailed or HandBack."""
        entity = self.runtime.cfg.entity(job.entity)
        client = job.client
        attempt_id = jobs.new_attempt_id()
        while True:
            if self.unchanged(entity, client):
                jobs.record_unchanged(
                    self.sql,
                    entity.name,
                    client,
                    owner=self.owner,
                    message_id=message_id,
                    delivery_attempt=delivery_attempt,
                )
                return jobs.OUT_UNCHANGED
            if jobs.acquire(
                self.sql,
                entity.name,
                client,
                owner=self.owner,
                attempt_id=attempt_id,
                ttl_s=self.jobs_cfg.lease_ttl_s,
                message_id=message_id,
                delivery_attempt=delivery_attempt,
            ):
                break
            holder, until = jobs.holder(self.sql, entity.name, client)
            log.info(
                "%s/%s: running on %s (lease until %s); waiting", entity.name, client, holder, until
            )
            if hand.stop.wait(self.opt.poll_s):
                raise HandBack("stopping while another worker runs this client")
        hand.lease = (entity.name, client, attempt_id)
        try:
            rows = self._copy_and_verify(entity, client, attempt_id, hand)
        except Exception as exc:
            hand.lease = None
            self._settle_failure(entity.name, client, attempt_id, exc, delivery_attempt)
        hand.lease = None
        jobs.finish(self.sql, entity.name, client, attempt_id, outcome=jobs.OUT_DONE, rows=rows)
        return jobs.OUT_DONE

    def _settle_failure(
        self, entity: str, client: str, attempt_id: str, exc: Exception, delivery: int
    ) -> NoReturn:
        """Close the attempt and raise: HandBack (not counted: stopping, lease spent, a
        store down) or JobFailed (counted; ``final`` once the attempts are spent)."""
        if isinstance(exc, HandBack) or _transient(exc):
            try:
                jobs.finish(
                    self.sql,
                    entity,
                    client,
                    attempt_id,
                    outcome=jobs.OUT_HANDED_BACK,
                    error=redact(str(exc)),
                )
            except Exception:  # the store is down: the lease simply expires
                log.warning("%s/%s: could not hand the lease back", entity, client)
            if isinstance(exc, HandBack):
                raise exc
            raise HandBack(f"{type(exc).__name__}: {redact(str(exc))}") from exc
        error = describe(exc)
        final = self.is_final(entity, client, delivery, failed_now=True)
        jobs.finish(
            self.sql, entity, client, attempt_id, outcome=jobs.OUT_FAILED, error=error, final=final
        )
        if not isinstance(exc, JobFailed):
            log.error("%s/%s: unexpected error", entity, client, exc_info=exc)
        raise JobFailed(error, final=final) from exc

    def is_final(self, entity: str, client: str, delivery: int, *, failed_now: bool) -> bool:
        runs = jobs.failed_runs(self.sql, entity, client) + (1 if failed_now else 0)
        return max(delivery, runs) >= self.jobs_cfg.max_delivery_attempts

    def _copy_and_verify(self, entity: Entity, client: str, attempt_id: str, hand: _InHand) -> int:
        entry = ledger.client_status(self.sql, entity.name, client)
        rows = 0
        if self.needs_copy(entity, entry):
            jobs.note_copy(self.sql, entity.name, client, attempt_id)
            rows = self._copy(entity, client, hand)
            entry = ledger.client_status(self.sql, entity.name, client)
        if entry is None or not entry.copy_complete:
            raise JobFailed(f"{entity.name}/{client}: the copy did not complete")
        if hand.stop.is_set():
            raise HandBack("stopping before verification")
        verifier = Verifier(
            self.sql,
            self.source,
            entity,
            recheck_delay_s=self.opt.recheck_delay_s,
            progress=_quiet,
            emit=log.info,
        )
        try:
            report = verifier.run([client], record=True)
        except SourceError as exc:
            raise JobFailed(f"verification could not read the source: {exc}") from None
        if not report.clean:
            shown = "; ".join(d.describe() for d in report.remaining[:5])
            more = f" and {len(report.remaining) - 5} more" if len(report.remaining) > 5 else ""
            raise JobFailed(
                f"verification of {entity.name}/{client}: {len(report.remaining)} "
                f"difference(s) left: {shown}{more}"
            )
        return rows

    def _copy(self, entity: Entity, client: str, hand: _InHand) -> int:
        """The client's backfill: resumed from its checkpoint, or again when complete."""
        options = Options(
            batch=self.opt.batch,
            rate=self.opt.rate,
            clients=(client,),
            lease_ttl_s=self.jobs_cfg.lease_ttl_s,
            processes=self.opt.processes,
        )
        backfill = Backfill(self.sql, self.source, entity, options, progress=_quiet, emit=log.info)
        run = get_run(self.sql, backfill.run_id)
        if run is not None and run.status == DONE:
            backfill = Backfill(
                self.sql,
                self.source,
                entity,
                replace(options, restart=True),
                progress=_quiet,
                emit=log.info,
            )
        hand.backfill = backfill
        if hand.stop.is_set():
            raise HandBack("stopping before the copy")
        try:
            summary = backfill.run()
        except (SourceError, RestartRefused, ReaderGone) as exc:
            raise JobFailed(f"the copy failed: {exc}") from None
        finally:
            hand.backfill = None
        if summary.stopped:
            raise HandBack("stopped during the copy (it resumes from its checkpoint)")
        if summary.bad:
            shown = "; ".join(f"{b.ref}: {b.error}" for b in summary.bad[:5])
            raise JobFailed(
                f"{len(summary.bad)} document(s) of {entity.name}/{client} could not be mapped "
                f"(not copied; fix them in the old store, then replay): {shown}"
            )
        if not summary.complete:
            raise JobFailed(f"the copy of {entity.name}/{client} did not complete")
        return summary.session_rows


def describe(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, JobFailed) else f"{type(exc).__name__}: {exc}"
    return redact(text)[:4000]


def backoff_s(jobs_cfg: Jobs, attempt: int) -> int:
    """Seconds before a failed job is delivered again: doubling from the minimum."""
    base = jobs_cfg.retry_min_backoff_s * 2 ** max(0, attempt - 1)
    return int(min(jobs_cfg.retry_max_backoff_s, base, 600))


class JobWorker:
    """Pulls and runs jobs in this process (``start``/``stop``, or ``run`` for the CLI)."""

    def __init__(
        self,
        runtime: Runtime,
        source: Source,
        options: JobOptions | None = None,
        *,
        concurrency: int | None = None,
        on_settled: Callable[[str, str], None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.cfg = runtime.cfg
        self.jobs_cfg = self.cfg.jobs_or_error()
        self.opt = options or JobOptions()
        self.concurrency = concurrency or self.jobs_cfg.concurrency
        self.owner = new_owner("/jobs")
        self.runner = JobRunner(runtime, source, self.opt, self.owner)
        self.on_settled = on_settled
        self.stopping = threading.Event()
        self.error: str | None = None
        self.settled: dict[str, int] = {}
        self._hands: dict[str, _InHand] = {}
        self._lock = threading.Lock()
        #: Held while a message is acked or rescheduled, and while the keeper extends
        #: messages: an extension can never undo a backoff that was just set.
        self._settle = threading.Lock()
        self._slots = threading.Semaphore(self.concurrency)
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="job")
        self._client: Any = None
        self._path = pubsub.subscription_path(runtime.settings, self.jobs_cfg.subscription)
        self._threads: list[threading.Thread] = []
        self._done = 0

    @property
    def finished(self) -> int:
        """Messages acked so far: jobs done, unchanged or failed for good, bad messages."""
        with self._lock:
            return sum(self.settled.get(k, 0) for k in _ACKED)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        from cutover.tables import all_tables

        self.runtime.sql.ensure_schema(all_tables())  # jobs, ledger and failure-log tables
        self._client = pubsub.subscriber(self.runtime.settings)
        for target, name in ((self._pull_loop, "jobs-pull"), (self._keep_loop, "jobs-keeper")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info(
            "pulling %s (%d at a time) as %s",
            self.jobs_cfg.subscription,
            self.concurrency,
            self.owner,
        )

    def stop(self, *, abandon: bool = False) -> None:
        """Stop pulling and finish the jobs in hand (``abandon``: hand them back at
        their next batch instead)."""
        self.stopping.set()
        if abandon:
            self._hand_back_all()
        if self._threads:
            self._threads[0].join(_PULL_TIMEOUT_S + 30)  # no job starts after this
        self._pool.shutdown(wait=True)
        for thread in self._threads:
            thread.join(30)
        if self._client is not None:
            self._client.close()
            self._client = None

    def _hand_back_all(self) -> None:
        with self._lock:
            for hand in self._hands.values():
                hand.hand_back()

    def wait(self, timeout: float | None = None) -> bool:
        """Until the pull loop ends by itself (``max_jobs`` settled, a fatal error)."""
        self._threads[0].join(timeout)
        return not self._threads[0].is_alive()

    def run(self) -> int:
        """The console entry: until SIGTERM/SIGINT (a second one hands the jobs in hand
        back at their next batch) or ``max_jobs``; exit code 1 on a fatal error."""
        signals = {"n": 0}

        def on_signal(signum: int, _frame: Any) -> None:
            signals["n"] += 1
            if signals["n"] == 1:
                log.info("received %s: finishing the job(s) in hand", signal.Signals(signum).name)
                self.stopping.set()
            else:
                log.info("received %s again: handing the job(s) in hand back", signum)
                self._hand_back_all()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not self.stopping.wait(0.5) and self._threads[0].is_alive():
                pass
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info(
            "stopped: %s",
            ", ".join(f"{n} {k}" for k, n in sorted(self.settled.items())) or "no jobs",
        )
        return 1 if self.error else 0

    # -- pulling ------------------------------------------------------------------------
    def _pull_loop(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            if self.opt.max_jobs is not None:
                with self._lock:
                    done, claimed = self._done, self._done + len(self._hands)
                if done >= self.opt.max_jobs:
                    break
                if claimed >= self.opt.max_jobs:
                    self.stopping.wait(self.opt.poll_s)
                    continue
            if not self._slots.acquire(timeout=self.opt.poll_s):
                continue
            free = 1
            while free < self.concurrency and self._slots.acquire(blocking=False):
                free += 1
            if self.opt.max_jobs is not None:
                extra = max(0, free - (self.opt.max_jobs - self._claimed()))
                for _ in range(extra):
                    self._slots.release()
                free -= extra
            try:
                received = self._pull(free)
                failures = 0
            except gexc.NotFound:
                self.error = (
                    f"subscription {self.jobs_cfg.subscription} not found: run `cutover jobs add`"
                )
                log.error("%s", self.error)
                self.stopping.set()
                received = []
            except (gexc.GoogleAPIError, gexc.RetryError) as exc:
                failures += 1
                log.warning("pull failed (%s); retrying", redact(str(exc).splitlines()[0]))
                received = []
                self.stopping.wait(min(10.0, 0.5 * 2**failures))
            for _ in range(free - len(received)):
                self._slots.release()
            for message in received:
                self._start(message)
            if not received:
                self.stopping.wait(self.opt.poll_s)

    def _claimed(self) -> int:
        with self._lock:
            return self._done + len(self._hands)

    def _pull(self, n: int) -> list[Any]:
        try:
            response = self._client.pull(
                request={"subscription": self._path, "max_messages": n},
                timeout=_PULL_TIMEOUT_S,
                retry=None,
            )
        except gexc.DeadlineExceeded:
            return []
        return list(response.received_messages)

    def _start(self, received: Any) -> None:
        hand = _InHand(received.ack_id, time.monotonic())
        with self._lock:
            self._hands[received.ack_id] = hand
        self._pool.submit(self._handle, received, hand)

    # -- one message --------------------------------------------------------------------
    def _handle(self, received: Any, hand: _InHand) -> None:
        message = received.message
        delivery = int(received.delivery_attempt or 0)
        settled = "handed-back"
        try:
            try:
                job = jobs.parse_job(message.data, self.cfg)
            except jobs.JobMessageError as exc:
                self._record(received, f"bad job message: {exc}", message.attributes.get("entity"))
                settled = "bad-message"
                self._ack(hand)
                return
            settled = self._run(job, received, hand, delivery)
        except Exception as exc:  # a store down while settling: redelivered later
            log.warning(
                "job message %s: %s; handing it back",
                message.message_id,
                redact(str(exc)),
                exc_info=not _transient(exc),
            )
            self._modack(hand, self._retry_in(delivery))
            settled = "handed-back"
        finally:
            with self._lock:
                self._hands.pop(hand.ack_id, None)
                if settled != "handed-back":
                    self._done += 1
                self.settled[settled] = self.settled.get(settled, 0) + 1
            self._slots.release()
            if self.on_settled is not None:
                self.on_settled(message.message_id, settled)

    def _run(self, job: jobs.Job, received: Any, hand: _InHand, delivery: int) -> str:
        message = received.message
        name = f"{job.entity}/{job.client}"
        try:
            outcome = self.runner.run(job, hand, message.message_id, delivery)
        except HandBack as exc:
            log.info("%s: handed back (%s)", name, exc)
            self._modack(hand, 0 if self.stopping.is_set() else self._retry_in(delivery))
            return "handed-back"
        except JobFailed as exc:
            if not exc.final:
                wait = backoff_s(self.jobs_cfg, max(delivery, 1))
                log.warning(
                    "%s: failed (attempt %d of %d), retrying in %d s: %s",
                    name,
                    max(delivery, 1),
                    self.jobs_cfg.max_delivery_attempts,
                    wait,
                    describe(exc),
                )
                self._modack(hand, wait)
                return "retrying"
            log.error(
                "%s: failed for the last time; recorded in the failure log: %s", name, describe(exc)
            )
            self._record(received, describe(exc), job.entity)
            self._ack(hand)
            return "failed"
        log.info("%s: %s", name, outcome)
        self._ack(hand)
        return outcome

    def _retry_in(self, delivery: int) -> int:
        return backoff_s(self.jobs_cfg, max(delivery, 1))

    def _record(self, received: Any, error: str, entity: str | None) -> None:
        """The message and why, in the failure log (where ``subs failures`` finds it)."""
        from subscribers import failures

        message = received.message
        poison = failures.Poison(
            message.message_id,
            bytes(message.data),
            dict(message.attributes),
            message.ordering_key or "",
            max(1, int(received.delivery_attempt or 0)),
            error,
        )
        sub = self.jobs_cfg.as_subscription(entity if entity in self.cfg.entities else "")
        sql = self.runtime.sql
        with sql.transaction() as cur:
            failures.record(sql, cur, sub, [poison])

    def _ack(self, hand: _InHand) -> None:
        try:
            with self._settle:
                hand.settled = True
                self._client.acknowledge(
                    request={"subscription": self._path, "ack_ids": [hand.ack_id]}
                )
        except gexc.GoogleAPIError as exc:  # redelivered later: a duplicate, harmless
            log.warning(
                "ack failed (%s); the job will come back and finish at once",
                redact(str(exc).splitlines()[0]),
            )

    def _modack(self, hand: _InHand, seconds: int) -> None:
        """Redeliver in ``seconds`` (0: at once), on any server."""
        try:
            with self._settle:
                hand.settled = True
                self._client.modify_ack_deadline(
                    request={
                        "subscription": self._path,
                        "ack_ids": [hand.ack_id],
                        "ack_deadline_seconds": max(0, min(600, seconds)),
                    }
                )
        except gexc.GoogleAPIError as exc:  # the deadline runs out by itself
            log.warning("could not reschedule a job (%s)", redact(str(exc).splitlines()[0]))

    # -- keeping leases -----------------------------------------------------------------
    def _keep_loop(self) -> None:
        ack_every = self.jobs_cfg.ack_deadline_s / 3
        lease_every = self.jobs_cfg.lease_ttl_s / 3
        last_ack = last_lease = time.monotonic()
        while not (self.stopping.is_set() and not self._hands_copy()):
            time.sleep(min(0.5, ack_every, lease_every))
            now = time.monotonic()
            if now - last_ack >= ack_every:
                last_ack = now
                self._extend_messages(now)
            if now - last_lease >= lease_every:
                last_lease = now
                self._renew_leases()

    def _hands_copy(self) -> list[_InHand]:
        with self._lock:
            return list(self._hands.values())

    def _extend_messages(self, now: float) -> None:
        with self._settle:
            self._extend_unsettled(now)

    def _extend_unsettled(self, now: float) -> None:
        keep = []
        for hand in self._hands_copy():
            if hand.settled:
                continue
            if now - hand.received > self.jobs_cfg.max_lease_s:
                if not hand.stop.is_set():
                    log.warning(
                        "a job ran past max_lease_s (%d s): handing it back",
                        self.jobs_cfg.max_lease_s,
                    )
                    hand.hand_back()
                continue
            keep.append(hand.ack_id)
        if not keep or self._client is None:
            return
        try:
            self._client.modify_ack_deadline(
                request={
                    "subscription": self._path,
                    "ack_ids": keep,
                    "ack_deadline_seconds": self.jobs_cfg.ack_deadline_s,
                }
            )
        except gexc.GoogleAPIError as exc:
            log.warning("could not extend job messages (%s)", redact(str(exc).splitlines()[0]))

    def _renew_leases(self) -> None:
        for hand in self._hands_copy():
            if hand.lease is None:
                continue
            entity, client, attempt_id = hand.lease
            try:
                held = jobs.renew(
                    self.runtime.sql, entity, client, attempt_id, self.jobs_cfg.lease_ttl_s
                )
            except Exception as exc:  # the store is down: the copy cannot commit either
                log.warning("%s/%s: lease not renewed (%s)", entity, client, redact(str(exc)))
                continue
            if not held and hand.lease is not None:
                log.warning("%s/%s: lease lost (taken over); handing the job back", entity, client)
                hand.hand_back()
