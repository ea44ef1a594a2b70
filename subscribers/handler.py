"""One batch of messages in, one transaction out: the handler's core, without Pub/Sub.

The worker hands a batch here and acks it only when :meth:`BatchHandler.handle`
returns; any exception means "nothing of this batch may be acked" and the worker nacks
it. Inside one SQL transaction: the rows go through the sink's version-guarded write,
poison messages go to the failure log, the subscription's counters grow; then commit.

A row the SQL store itself rejects (SQLSTATE class 22/23: a value the database will
not take) would fail the whole batch forever, so the batch is split in halves until
the offending message is alone, and that one is logged as poison. Every other store
error (connection lost, deadlock, timeout, missing table) propagates: the batch is
redelivered later and nothing is recorded as poison for a problem of the store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import pyodbc

from cutover.events import Event, EventError
from cutover.redaction import redact
from cutover.runtime import Runtime
from cutover.tables import all_tables
from stores.mapping import MappingError, Row
from stores.sql import WriteResult

from . import counters, failures
from .decode import decode
from .sinks import Sink, sink_for


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

    def poison(self) -> failures.Poison:
        m = self.message
        return failures.Poison(
            m.message_id,
            bytes(m.data),
            dict(m.attributes),
            m.ordering_key or "",
            m.delivery_attempt or 1,
            self.error or "unknown error",
        )


def is_data_error(exc: BaseException) -> bool:
    """The database refused a value (not a transient or schema problem)."""
    if isinstance(exc, pyodbc.DataError | pyodbc.IntegrityError):
        return True
    state = str(exc.args[0]) if isinstance(exc, pyodbc.Error) and exc.args else ""
    return state.startswith(("22", "23"))


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
        except (EventError, MappingError) as exc:
            item.error = str(exc)
        return item

    def _commit(self, items: list[_Item]) -> BatchOutcome:
        good = [i for i in items if i.row is not None]
        poisons = [i.poison() for i in items if i.row is None]
        # Key order: concurrent workers lock rows in one order, so they cannot deadlock.
        rows = sorted((i.row for i in good if i.row is not None), key=lambda r: r.key)
        try:
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
        except pyodbc.Error as exc:
            if not is_data_error(exc) or not good:
                raise
            return self._split(items, exc)
        return BatchOutcome(
            result.applied,
            result.stale,
            len(poisons),
            [i.event.occurred_at for i in good if i.event],
        )

    def _split(self, items: list[_Item], exc: pyodbc.Error) -> BatchOutcome:
        """Isolate the message(s) the store refuses; commit the rest in smaller batches."""
        good = [i for i in items if i.row is not None]
        if len(good) == 1:
            good[0].row = None
            good[0].error = f"the SQL store rejected the row: {redact(str(exc))}"
            return self._commit(items)
        half = len(items) // 2
        outcome = self._commit(items[:half])
        outcome += self._commit(items[half:])
        return outcome
