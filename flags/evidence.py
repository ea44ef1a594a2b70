"""Shadow evidence: each client's background comparisons and mismatches, kept.

The read service compares served reads with the other store (:mod:`app.shadow`); the
gate for ``new`` wants, per client, enough comparisons and few enough mismatches. The
counts therefore live in the SQL store (``cutover_shadow_evidence``, declared in
:mod:`flags.tables`), where every API process adds to them and a restart loses none.

- **Buckets.** One row per (entity, client, stage, time bucket) holds comparisons,
  mismatches (comparisons that found a difference persisting after the re-check),
  mismatched items and errors. A bucket starts at a multiple of its length
  (``shadow_evidence_bucket_s``, an hour by default) since the epoch, in UTC.
- **Off the request path, batched.** An :class:`EvidenceBuffer` adds counts in memory
  (from the comparer's threads, under a lock) and flushes them every
  ``shadow_evidence_flush_s`` and at stop: one increment-upsert statement per 1,000
  keys, whatever the traffic. Rows are only ever added to (``stored + given``, see
  :meth:`stores.sql.Dialect.increment_upsert`), so any number of processes, flushing
  in any interleaving, add up exactly. A flush that fails (store down) puts its counts
  back for the next one; counts still in memory when a process dies are lost (at most
  one flush interval's). A failure after the server committed (a lost connection at
  COMMIT) would add that batch twice when it is retried: the store cannot tell.
- **Windows.** A window of W seconds sums whole buckets, those starting at or after
  ``now - W`` rounded down to a bucket: it spans W plus at most one bucket.
  Buckets older than twice the gate's window are deleted by the flushers (hourly).
- **Many clients.** :func:`shadow_verdict` answers for any number of clients with one
  grouped query (``GROUP BY client_id``).
- **Read outcomes.** The same mechanism counts the read API's responses per client at
  the stages a rollout moves clients through (``cutover_read_outcomes``: served, and
  how many were server errors): an :class:`OutcomeBuffer`, fed one response at a time
  (:meth:`OutcomeBuffer.served`, see :mod:`flags.rollout_outcomes`), flushed and
  pruned like the evidence; :func:`outcomes_per_client` sums a window. The rollout's
  guardrails (:mod:`flags.rollout`) read both.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import astuple, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

from core.clock import now_utc
from stores import jsontext
from stores.sql import SqlStore, Table, bookkeeping

from .tables import EVIDENCE, OUTCOMES

if TYPE_CHECKING:
    from core.settings import Settings

log = logging.getLogger(__name__)

COUNTERS = ("comparisons", "mismatches", "mismatched_items", "errors")
OUTCOME_COUNTERS = ("served", "server_errors")
#: The stages whose responses are counted as outcomes (``old`` is what a rollout
#: starts from and goes back to: its reads are not the rollout's doing).
OUTCOME_STAGES = ("shadow", "new")
_KEYS = ("entity", "client_id", "stage", "bucket_start")
#: Client ids looked up by an ``IN`` list; more are read with the entity's whole window
#: (one query either way; SQL Server takes at most 2,100 parameters per statement).
IN_LIST_MAX = 500
#: How often a flusher deletes buckets older than its retention.
PRUNE_EVERY = timedelta(hours=1)

#: (entity, client id, stage, bucket start)
Key = tuple[str, str, str, datetime]


class _Summed:
    """A dataclass of integer counters that ``+`` adds field by field."""

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(astuple(self))  # type: ignore[call-overload]

    def __add__(self, other: Self) -> Self:
        pairs = zip(self.as_tuple(), other.as_tuple(), strict=True)
        return type(self)(*(a + b for a, b in pairs))


@dataclass(frozen=True)
class Counts(_Summed):
    """Comparison outcomes; ``+`` adds them."""

    comparisons: int = 0
    mismatches: int = 0
    mismatched_items: int = 0
    errors: int = 0

    @property
    def rate(self) -> float | None:
        """Share of comparisons that mismatched; None before any comparison."""
        return self.mismatches / self.comparisons if self.comparisons else None


@dataclass(frozen=True)
class Outcomes(_Summed):
    """The read API's responses to one client: served, and how many were 5xx."""

    served: int = 0
    server_errors: int = 0

    @property
    def rate(self) -> float | None:
        """Share of responses that were server errors; None before any response."""
        return self.server_errors / self.served if self.served else None


C = TypeVar("C", bound=_Summed)


def bucket_start(at: datetime, bucket_s: int) -> datetime:
    """The start of the bucket holding ``at`` (aware, UTC)."""
    if at.tzinfo is None:
        raise ValueError("bucket_start needs an aware datetime")
    return datetime.fromtimestamp(int(at.timestamp()) // bucket_s * bucket_s, UTC)


def window_start(now: datetime, window_s: int, bucket_s: int) -> datetime:
    """The first bucket a window of ``window_s`` ending ``now`` sums."""
    return bucket_start(now - timedelta(seconds=window_s), bucket_s)


# -- the SQL ------------------------------------------------------------------------------
_READY: weakref.WeakSet[SqlStore] = weakref.WeakSet()


def ensure_table(store: SqlStore) -> None:
    """Create the evidence and outcome tables once per store object (API processes do
    not run ``cutover db init``; ``ensure_schema`` is idempotent)."""
    if store not in _READY:
        store.ensure_schema([EVIDENCE, OUTCOMES])
        _READY.add(store)


def add_counts(store: SqlStore, counts: Mapping[Key, Counts]) -> int:
    """Add ``counts`` to the stored rows in one transaction; returns the keys written.

    One statement per ``max_rows`` keys, keys in sorted order (see
    :meth:`~stores.sql.Dialect.increment_upsert`).
    """
    return _add_rows(store, EVIDENCE, COUNTERS, counts, Counts())


def add_outcomes(store: SqlStore, outcomes: Mapping[Key, Outcomes]) -> int:
    """Add read outcomes to the stored rows, exactly as :func:`add_counts` does."""
    return _add_rows(store, OUTCOMES, OUTCOME_COUNTERS, outcomes, Outcomes())


def _add_rows(
    store: SqlStore, table: Table, counters: tuple[str, ...], counts: Mapping[Key, C], zero: C
) -> int:
    rows: list[tuple[Key, C]] = [(k, counts[k]) for k in sorted(counts) if counts[k] != zero]
    if not rows:
        return 0
    ensure_table(store)
    d = store.dialect
    sql = d.increment_upsert(
        table.name,
        [(name, table.col(name).kind) for name in _KEYS],
        list(counters),
        stamp="updated_at",
    )
    convert = d.json_converter("datetime") or (lambda v: v)
    batch = [[*k[:3], convert(k[3]), *value.as_tuple()] for k, value in rows]
    written_at = d.to_db("datetime", now_utc())
    with store.transaction() as cur:
        for start in range(0, len(batch), d.max_rows):
            chunk = jsontext.dumps_with_times(batch[start : start + d.max_rows])
            cur.execute(sql, written_at, chunk)
    return len(rows)


def _window(
    store: SqlStore, since: datetime, stages: Collection[str] | None, table: Table = EVIDENCE
) -> tuple[list[str], list[Any]]:
    d = store.dialect
    extra, params = [f"{d.quote('bucket_start')} >= ?"], [d.to_db("datetime", since)]
    if stages is not None:
        cond, values = bookkeeping.in_list(d, table, "stage", sorted(stages))
        extra.append(cond)
        params += values
    return extra, params


def per_client(
    store: SqlStore,
    entity: str,
    *,
    since: datetime,
    client_ids: Collection[str] | None = None,
    stages: Collection[str] | None = None,
) -> dict[str, Counts]:
    """Each client's counts from bucket ``since`` on (clients with none are absent).

    One query: ``client_ids`` up to :data:`IN_LIST_MAX` go into an ``IN`` list, more
    read the entity's whole window and keep the ones asked for.
    """
    sums = _per_client(store, EVIDENCE, COUNTERS, entity, since, client_ids, stages)
    return {client: Counts(*values) for client, values in sums.items()}


def outcomes_per_client(
    store: SqlStore,
    entity: str,
    *,
    since: datetime,
    client_ids: Collection[str] | None = None,
    stages: Collection[str] | None = None,
) -> dict[str, Outcomes]:
    """Each client's read outcomes from bucket ``since`` on, as :func:`per_client`."""
    sums = _per_client(store, OUTCOMES, OUTCOME_COUNTERS, entity, since, client_ids, stages)
    return {client: Outcomes(*values) for client, values in sums.items()}


def _per_client(
    store: SqlStore,
    table: Table,
    counters: tuple[str, ...],
    entity: str,
    since: datetime,
    client_ids: Collection[str] | None,
    stages: Collection[str] | None,
) -> dict[str, tuple[int, ...]]:
    ensure_table(store)
    extra, params = _window(store, since, stages, table)
    wanted = None if client_ids is None else set(client_ids)
    if wanted is not None and len(wanted) <= IN_LIST_MAX:
        cond, values = bookkeeping.in_list(store.dialect, table, "client_id", sorted(wanted))
        extra.append(cond)
        params += values
    with store.transaction() as cur:
        sums = bookkeeping.sum_by(
            cur,
            store.dialect,
            table,
            ("client_id",),
            counters,
            {"entity": entity},
            extra=" AND ".join(extra),
            extra_params=params,
        )
    return {
        str(client): values
        for (client,), values in sums.items()
        if wanted is None or client in wanted
    }


def totals(
    store: SqlStore, entity: str, *, since: datetime, stages: Collection[str] | None = None
) -> Counts:
    """The entity's counts over every client from bucket ``since`` on."""
    ensure_table(store)
    extra, params = _window(store, since, stages)
    with store.transaction() as cur:
        sums = bookkeeping.sum_by(
            cur,
            store.dialect,
            EVIDENCE,
            (),
            COUNTERS,
            {"entity": entity},
            extra=" AND ".join(extra),
            extra_params=params,
        )
    return Counts(*sums.get((), ()))


def prune(store: SqlStore, *, before: datetime, table: Table = EVIDENCE) -> int:
    """Delete buckets that start before ``before``; returns the rows deleted."""
    ensure_table(store)
    d = store.dialect
    with store.transaction() as cur:
        return bookkeeping.delete(
            cur,
            d,
            table,
            {},
            extra=f"{d.quote('bucket_start')} < ?",
            extra_params=[d.to_db("datetime", before)],
        )


# -- counting in memory, flushing in the background -----------------------------------------
class _Buffer(Generic[C]):
    """Counts added in memory by any thread, flushed to the store in the background.

    :meth:`count` never touches the store (a lock and a dict update), so it is safe on
    the comparer's threads. :meth:`start` runs a flusher thread every ``flush_s``;
    :meth:`stop` ends it and flushes what is left. A subclass says which table the
    counts go to (:attr:`table`, :meth:`_write`).
    """

    table: Table = EVIDENCE

    def __init__(
        self,
        store: SqlStore,
        *,
        bucket_s: int = 3600,
        flush_s: float = 5.0,
        retention_s: int = 14 * 86400,
        clock: Callable[[], datetime] = now_utc,
    ) -> None:
        self._store = store
        self._bucket_s = bucket_s
        self._flush_s = flush_s
        self._retention = timedelta(seconds=retention_s)
        self._clock = clock
        self._pending: dict[Key, C] = {}
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._pruned_at: datetime | None = None

    @classmethod
    def from_settings(cls, store: SqlStore, settings: Settings) -> Self:
        return cls(
            store,
            bucket_s=settings.shadow_evidence_bucket_s,
            flush_s=settings.shadow_evidence_flush_s,
            retention_s=2 * settings.gate_shadow_window_s,
        )

    def count(
        self,
        entity: str,
        client_id: str,
        stage: str,
        counts: C,
        *,
        at: datetime | None = None,
    ) -> None:
        """Add ``counts`` to the client's bucket of ``at`` (default: now)."""
        key = (entity, client_id, stage, bucket_start(at or self._clock(), self._bucket_s))
        with self._lock:
            held = self._pending.get(key)
            self._pending[key] = counts if held is None else held + counts

    def pending(self) -> dict[Key, C]:
        """The counts not yet written (a copy)."""
        with self._lock:
            return dict(self._pending)

    def flush(self) -> int:
        """Write the pending counts; returns the keys written. On failure they are put
        back (added to anything counted meanwhile) and the error is raised."""
        with self._flushing:
            with self._lock:
                batch, self._pending = self._pending, {}
            try:
                return self._write(batch)
            except BaseException:
                self._restore(batch.items())
                raise

    def _write(self, batch: Mapping[Key, C]) -> int:
        raise NotImplementedError

    def _restore(self, items: Iterable[tuple[Key, C]]) -> None:
        with self._lock:
            for key, counts in items:
                held = self._pending.get(key)
                self._pending[key] = counts if held is None else held + counts

    # -- the flusher ------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopped.clear()
        self._thread = threading.Thread(target=self._loop, name="shadow-evidence", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """End the flusher and flush what is left; False when that last flush failed."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        return self._flush_quietly()

    def _loop(self) -> None:
        while not self._stopped.wait(self._flush_s):
            self._flush_quietly()
            self._prune_quietly()

    def _flush_quietly(self) -> bool:
        try:
            self.flush()
            return True
        except Exception as exc:
            kept = len(self.pending())
            log.warning("%s not written yet (%d keys kept): %s", self.table.name, kept, exc)
            return False

    def _prune_quietly(self) -> None:
        now = self._clock()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        try:
            before = bucket_start(now - self._retention, self._bucket_s)
            prune(self._store, before=before, table=self.table)
        except Exception as exc:
            log.warning("old counts in %s not pruned: %s", self.table.name, exc)


class EvidenceBuffer(_Buffer[Counts]):
    """Shadow comparison counts, buffered and flushed (see :class:`_Buffer`)."""

    table = EVIDENCE

    def _write(self, batch: Mapping[Key, Counts]) -> int:
        return add_counts(self._store, batch)


class OutcomeBuffer(_Buffer[Outcomes]):
    """The read API's responses per client, buffered and flushed (see :class:`_Buffer`)."""

    table = OUTCOMES

    def _write(self, batch: Mapping[Key, Outcomes]) -> int:
        return add_outcomes(self._store, batch)

    def served(self, entity: str, client_id: str, stage: str, status: int) -> None:
        """Count one response to ``client_id`` served at ``stage`` with HTTP ``status``
        (5xx: a server error). Responses at stages outside :data:`OUTCOME_STAGES` are
        not counted. Never touches the store (safe on the event loop)."""
        if stage in OUTCOME_STAGES:
            self.count(entity, client_id, stage, Outcomes(1, int(status >= 500)))


# -- the gate's question ----------------------------------------------------------------------
@dataclass(frozen=True)
class ShadowPolicy:
    """What the gate asks of each client's shadow evidence (see the settings)."""

    min_comparisons: int = 100
    max_mismatch_rate: float = 0.001
    window_s: int = 7 * 86400
    bucket_s: int = 3600

    @classmethod
    def from_settings(cls, settings: Settings) -> ShadowPolicy:
        return cls(
            min_comparisons=settings.gate_min_shadow_comparisons,
            max_mismatch_rate=settings.gate_max_shadow_mismatch_rate,
            window_s=settings.gate_shadow_window_s,
            bucket_s=settings.shadow_evidence_bucket_s,
        )

    def since(self, now: datetime) -> datetime:
        return window_start(now, self.window_s, self.bucket_s)


@dataclass(frozen=True)
class ClientEvidence:
    """One client's evidence over the window and whether it passes the policy."""

    client_id: str
    comparisons: int
    mismatches: int
    mismatched_items: int
    errors: int
    rate: float | None
    since: datetime
    ok: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.client_id,
            "comparisons": self.comparisons,
            "mismatches": self.mismatches,
            "mismatched_items": self.mismatched_items,
            "errors": self.errors,
            "rate": self.rate,
            "since": self.since.isoformat(),
            "ok": self.ok,
            "reason": self.reason,
        }


def span(seconds: float) -> str:
    """A duration as an operator reads it: 45s, 90min, 36h, 7d."""
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}min"
    if s < 2 * 86400:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def judge(
    entity: str, client_id: str, counts: Counts, policy: ShadowPolicy, *, since: datetime
) -> ClientEvidence:
    """Whether one client's counts pass ``policy``, and why (not), in words."""
    n, m, rate = counts.comparisons, counts.mismatches, counts.rate
    who = f"{client_id!r} ({entity})"
    window = span(policy.window_s)
    look = f"`cutover flags evidence {entity} --client {client_id}`"
    if rate is not None and rate > policy.max_mismatch_rate:  # the first thing to fix
        ok = False
        reason = (
            f"shadow mismatch rate of {who} is {rate:.2%} ({m} of {n} comparisons in the "
            f"last {window}), above the {policy.max_mismatch_rate:.2%} allowed: see {look} "
            f"and the recorded mismatches"
        )
    elif n < policy.min_comparisons:
        ok = False
        reason = (
            f"{f'only {n}' if n else 'no'} shadow comparisons of {who} in the last {window} "
            f"({policy.min_comparisons} required): keep it at shadow while it serves reads "
            f"(`cutover flags set {entity} {client_id} shadow`), then see {look}"
        )
    else:
        ok = True
        reason = (
            f"{n} shadow comparisons, {m} mismatched ({rate:.2%}) in the last {window}"
            if rate is not None
            else f"no shadow comparisons in the last {window} (none required)"
        )
    return ClientEvidence(
        client_id, n, m, counts.mismatched_items, counts.errors, rate, since, ok, reason
    )


def shadow_verdict(
    store: SqlStore,
    entity: str,
    client_ids: Collection[str],
    *,
    policy: ShadowPolicy,
    now: datetime | None = None,
) -> dict[str, ClientEvidence]:
    """Each of ``client_ids``' evidence over the policy's window, judged: one query for
    any number of clients (a client with no comparisons has zero counts)."""
    since = policy.since(now or now_utc())
    found = per_client(store, entity, since=since, client_ids=client_ids)
    return {
        client: judge(entity, client, found.get(client, Counts()), policy, since=since)
        for client in client_ids
    }


def evidence_of_all(
    store: SqlStore, entity: str, *, policy: ShadowPolicy, now: datetime | None = None
) -> dict[str, ClientEvidence]:
    """Every client with evidence in the window, judged (status surfaces)."""
    since = policy.since(now or now_utc())
    found = per_client(store, entity, since=since)
    return {c: judge(entity, c, counts, policy, since=since) for c, counts in found.items()}
