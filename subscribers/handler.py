"""One batch of messages in, one transaction out: the handler's core, without Pub/Sub.

The worker hands a batch here and acks it only when :meth:`BatchHandler.handle`
returns; an exception means "nothing of this batch may be acked" and the worker nacks
it. Inside one SQL transaction: the rows go through the sink's version-guarded write,
poison messages go to the failure log, the subscription's counters grow; then commit.

One message costs at most one failure-log entry, never the batch or the worker, by
construction rather than by a list of known errors:

- Decoding never raises: whatever a body does (any exception, a recursion), it becomes
  that message's error.
- A failed transaction is classified by the sink (:meth:`~subscribers.sinks.Sink.store_failure`).
  A failure of a store (connection, timeout, deadlock, authentication, shutdown, a
  missing table) propagates: the batch is redelivered later and nothing is recorded as
  poison. Any other failure was caused by some message: the batch is split in halves,
  each committed on its own, until the message responsible is alone; alone, it is
  written once more (a glitch of a driver or server, such as a garbled reply, does not
  repeat) and, failing again, recorded as poison with the reason once a trivial read
  shows the store itself works (:func:`~subscribers.sinks.blame`). Every part is
  classified again, so a store that fails during a split still nacks the whole
  batch; the parts already committed are re-applied as stale when it comes back.
  RethinkDB writes are not transactional: a failed part may have written some of its
  rows, and writing them again changes nothing (the version rules), they count as
  stale.
- Recording a poison entry cleans what it stores (:func:`~subscribers.failures.record`).
  Should the failure log still refuse an entry, a plain one (ASCII text, the body in
  base64, no attributes) is recorded instead, so the body is never lost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from core.events import Event
from core.redaction import redact
from cutover.tables import all_tables
from stores.mapping import Row
from stores.runtime import Runtime
from stores.sql import WriteResult

from . import counters, failures
from .decode import decode, reason
from .sinks import Sink, blame, sink_for


class MessageLike(Protocol):
    """What the handler needs of a Pub/Sub message (google's ``Message`` fits)."""

    @property
    def message_id(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def attributes(self) -> Mapping[str, str]: ...
    @property
    def ordering_key(self) -> str: ...
    @property
    def delivery_attempt(self) -> int | None: ...


@dataclass
class BatchOutcome:
    applied: int = 0
    stale: int = 0
    failed: int = 0
    #: ``occurred_at`` of every event that was applied or skipped (for the lag metric).
    occurred: list[datetime] = field(default_factory=list)

    def __iadd__(self, other: BatchOutcome) -> BatchOutcome:
        self.applied += other.applied
        self.stale += other.stale
        self.failed += other.failed
        self.occurred += other.occurred
        return self


@dataclass
class _Item:
    message: MessageLike
    event: Event | None = None
    row: Row | None = None
    error: str | None = None
    #: The failure log refused this entry as it was: record it plainly.
    plain: bool = False

    def fail(self, error: str) -> None:
        """Make this message poison (its row is not written)."""
        self.event, self.row, self.error = None, None, error

    def poison(self) -> failures.Poison:
        m = self.message
        if self.plain:
            return failures.Poison(
                m.message_id, bytes(m.data), {}, "", 1, self.error or "", plain=True
            )
        return failures.Poison(
            m.message_id,
            bytes(m.data),
            dict(m.attributes),
            m.ordering_key or "",
            m.delivery_attempt or 1,
            self.error or "unknown error",
        )


class BatchHandler:
    """Applies batches for one subscription (one entity, one sink)."""

    def __init__(self, runtime: Runtime, subscription: str, *, sink: Sink | None = None) -> None:
        self.runtime = runtime
        self.subscription = runtime.cfg.subscription(subscription)
        self.entity = runtime.cfg.entity(self.subscription.entity)
        self.sql = runtime.sql
        self.sink = sink or sink_for(runtime, self.subscription)
        self._prepared = False

    def prepare(self) -> None:
        """Create or upgrade the tables and the counters row (idempotent).

        Called before the first batch rather than at construction, so a worker started
        while its store is down waits for it instead of crashing.
        """
        if self._prepared:
            return
        self.sql.ensure_schema(all_tables())
        self.sink.prepare(self.entity)
        counters.create(self.sql, self.subscription.name)
        self._prepared = True

    def handle(self, messages: Sequence[MessageLike]) -> BatchOutcome:
        """Apply a batch; returns only after it is committed (then the caller acks)."""
        return self.commit(self.decode(messages))

    def decode(self, messages: Sequence[MessageLike]) -> list[_Item]:
        """Parse and map every message; never raises (bad ones carry their error)."""
        return [self._decode(m) for m in messages]

    def commit(self, items: list[_Item]) -> BatchOutcome:
        """Write decoded messages in one transaction (see :meth:`handle`)."""
        self.prepare()
        return self._commit(items)

    def _decode(self, message: MessageLike) -> _Item:
        item = _Item(message)
        try:
            item.event, item.row = decode(self.runtime.cfg, self.entity, message.data)
        except Exception as exc:  # whatever one body does, it is that message's error
            item.error = reason(exc)
        return item

    def _commit(self, items: list[_Item]) -> BatchOutcome:
        """Commit ``items``, isolating the message(s) that make the transaction fail."""
        try:
            return self._transaction(items)
        except Exception as exc:
            if self.sink.store_failure(exc):
                raise
            return self._isolate(items, exc)

    def _transaction(self, items: list[_Item]) -> BatchOutcome:
        good = [i for i in items if i.row is not None]
        poisons = [i.poison() for i in items if i.row is None]
        # Key order: concurrent workers lock rows in one order, so they cannot deadlock.
        rows = sorted((i.row for i in good if i.row is not None), key=lambda r: r.key)
        with self.sql.transaction() as cur:
            result = self.sink.write(self.entity, rows, cur) if rows else WriteResult()
            if poisons:
                failures.record(self.sql, cur, self.subscription, poisons)
            newest = max((i.event.occurred_at for i in good if i.event), default=None)
            counters.add(
                self.sql,
                cur,
                self.subscription.name,
                applied=result.applied,
                stale=result.stale,
                failed=len(poisons),
                newest_event=newest,
            )
        return BatchOutcome(
            result.applied,
            result.stale,
            len(poisons),
            [i.event.occurred_at for i in good if i.event],
        )

    def _isolate(self, items: list[_Item], exc: Exception) -> BatchOutcome:
        """Commit the halves of a batch that failed because of a message, down to the
        one message responsible, which becomes poison (see the module docstring)."""
        if len(items) > 1:
            half = len(items) // 2
            outcome = self._commit(items[:half])
            outcome += self._commit(items[half:])
            return outcome
        [item] = items
        if item.row is not None:
            try:  # once more alone: a glitch of a driver or server does not repeat
                return self._transaction(items)
            except Exception as again:
                if self.sink.store_failure(again):
                    raise
                exc = again
            item.fail(blame(self.sink, self.entity, exc))
        elif not item.plain:
            item.plain = True
            item.error = (
                f"{item.error} (recorded plainly: the failure log refused the entry: "
                f"{type(exc).__name__}: {redact(str(exc)[:1000])})"
            )
        else:
            raise exc  # not even a plain entry can be written: retried as a store failure
        return self._commit(items)
