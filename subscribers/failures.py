"""The poison-message log: record, list, show and replay.

A message the handler cannot apply (not JSON, fails the contract, unknown entity, a
value of the wrong type, or a row the SQL store rejects) is recorded in
``subs_failures`` and then acked: one bad message never blocks the stream. The record
keeps the raw body, attributes, message id, error, attempt count and first/last seen,
so an engineer can fix the cause (the producer, the config, or the body itself) and
replay it; a replay goes through the same version-guarded write path as the stream, so
a replayed event older than the stored row changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from cutover.clock import now_utc
from cutover.config import ConfigError, Subscription
from cutover.events import EventError
from cutover.runtime import Runtime
from stores.mapping import MappingError
from stores.sql import SqlStore, StatementCursors, bookkeeping

from . import audit
from .decode import decode
from .sinks import sink_for
from .tables import FAILURES

Status = Literal["open", "replayed"]


class FailureNotFound(ConfigError):
    """No failure-log entry matches; the message says what was looked for."""


@dataclass(frozen=True)
class Poison:
    """A message that could not be applied, as the handler saw it."""

    message_id: str
    data: bytes
    attributes: Mapping[str, str]
    ordering_key: str
    delivery_attempt: int
    error: str


@dataclass(frozen=True)
class Failure:
    """One entry of the failure log."""

    subscription: str
    message_id: str
    entity: str | None
    data: bytes
    attributes: dict[str, str]
    ordering_key: str
    error: str
    attempts: int
    first_seen: datetime
    last_seen: datetime
    status: str
    resolved_at: datetime | None = None
    resolution: str | None = None

    @property
    def text(self) -> str:
        """The body for display: text when it is UTF-8, else a marked hex dump."""
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            return f"<{len(self.data)} bytes, not UTF-8> {self.data.hex()}"


@dataclass
class ReplayOutcome:
    subscription: str
    message_id: str
    result: Literal["applied", "stale", "failed", "would-apply", "requeued"]
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# -- storing ----------------------------------------------------------------------------
def _encode_body(data: bytes) -> tuple[str, str]:
    """Text when the body is UTF-8 without NUL (PostgreSQL text cannot hold NUL)."""
    try:
        text = data.decode("utf-8")
        if "\x00" not in text:
            return text, "utf-8"
    except UnicodeDecodeError:
        pass
    return base64.b64encode(data).decode("ascii"), "base64"


def _decode_body(text: str | None, encoding: str) -> bytes:
    if text is None:
        return b""
    if encoding == "base64":
        try:
            return base64.b64decode(text)
        except binascii.Error:
            return text.encode("utf-8")
    return text.encode("utf-8")


def _clean(text: str) -> str:
    return text.replace("\x00", "\\x00")


def record(
    store: SqlStore, cursor: StatementCursors, subscription: Subscription, poisons: Sequence[Poison]
) -> None:
    """Write poison messages in the caller's transaction (the batch's, for the SQL sink).

    A message seen again (redelivered, or replayed and still failing) keeps its first
    record: its attempts grow, its error and last-seen time are updated, and it is open
    again.
    """
    d, q = store.dialect, store.dialect.quote
    now = now_utc()
    for poison in poisons:
        cursor.execute(
            f"UPDATE {q(FAILURES.name)} SET {q('attempts')} = {q('attempts')} + 1, "
            f"{q('error')} = ?, {q('last_seen')} = {d.placeholder('datetime')}, "
            f"{q('status')} = ? WHERE {q('subscription')} = ? AND {q('message_id')} = ?",
            _clean(poison.error),
            d.to_db("datetime", now),
            "open",
            subscription.name,
            poison.message_id,
        )
        if cursor.rowcount:
            continue
        body, encoding = _encode_body(poison.data)
        values = {
            "subscription": subscription.name,
            "message_id": poison.message_id,
            "entity": subscription.entity,
            "data": body,
            "data_encoding": encoding,
            "attributes": dict(poison.attributes),
            "ordering_key": _clean(poison.ordering_key),
            "error": _clean(poison.error),
            "attempts": max(1, poison.delivery_attempt),
            "first_seen": now,
            "last_seen": now,
            "status": "open",
        }
        cursor.execute(*bookkeeping.insert_sql(d, FAILURES, values))


def _failure(row: dict[str, Any]) -> Failure:
    encoding = row.pop("data_encoding")
    row["data"] = _decode_body(row["data"], encoding)
    row["attributes"] = dict(row["attributes"] or {})
    row["ordering_key"] = row["ordering_key"] or ""
    return Failure(**row)


# -- reading ----------------------------------------------------------------------------
def list_failures(
    store: SqlStore,
    *,
    subscription: str | None = None,
    status: Status | None = "open",
    limit: int = 100,
) -> list[Failure]:
    """Entries newest first; ``status=None`` lists every status."""
    d, q = store.dialect, store.dialect.quote
    where, params = [], []
    if subscription is not None:
        where.append(f"{q('subscription')} = ?")
        params.append(subscription)
    if status is not None:
        where.append(f"{q('status')} = ?")
        params.append(status)
    sql = bookkeeping.select_sql(d, FAILURES)
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql = d.limit(f"{sql} ORDER BY {q('last_seen')} DESC, {q('message_id')}", limit)
    with store.transaction() as cur:
        cur.execute(sql, params)
        return [_failure(bookkeeping.record(d, FAILURES, r)) for r in cur.fetchall()]


def get(store: SqlStore, message_id: str, subscription: str | None = None) -> Failure:
    """One entry by message id (and subscription when the id is on several)."""
    d, q = store.dialect, store.dialect.quote
    sql = f"{bookkeeping.select_sql(d, FAILURES)} WHERE {q('message_id')} = ?"
    params = [message_id]
    if subscription is not None:
        sql += f" AND {q('subscription')} = ?"
        params.append(subscription)
    with store.transaction() as cur:
        cur.execute(sql, params)
        found = [_failure(bookkeeping.record(d, FAILURES, r)) for r in cur.fetchall()]
    where = f" on {subscription!r}" if subscription else ""
    if not found:
        raise FailureNotFound(f"no failure-log entry for message {message_id!r}{where}")
    if len(found) > 1:
        subs = ", ".join(f.subscription for f in found)
        raise FailureNotFound(
            f"message {message_id!r} failed on several subscriptions ({subs}): "
            "name one with --subscription"
        )
    return found[0]


# -- replaying --------------------------------------------------------------------------
def replay(
    runtime: Runtime,
    failure: Failure,
    *,
    data: bytes | None = None,
    actor: str | None = None,
    dry_run: bool = False,
) -> ReplayOutcome:
    """Re-apply one failed message after a fix, through the subscription's sink.

    ``data`` replaces the stored body (a corrected message); without it the stored body
    is judged again under the current config. Still poison: the entry stays open with
    attempts + 1 and the new error. Applied or stale (a newer version is already
    stored): the entry is marked replayed, in the same transaction as the row for the
    SQL sink. Every replay that writes is audited.
    """
    jobs = runtime.cfg.jobs
    if jobs is not None and failure.subscription == jobs.subscription:
        return _replay_job(runtime, failure, data=data, actor=actor, dry_run=dry_run)
    sub = runtime.cfg.subscription(failure.subscription)
    entity = runtime.cfg.entity(sub.entity)
    store = runtime.sql
    body = failure.data if data is None else data
    outcome = ReplayOutcome(sub.name, failure.message_id, "would-apply")
    try:
        event, row = decode(runtime.cfg, entity, body)
    except (EventError, MappingError) as exc:
        outcome.result, outcome.detail = "failed", str(exc)
        if not dry_run:
            poison = Poison(
                failure.message_id,
                failure.data,
                failure.attributes,
                failure.ordering_key,
                failure.attempts,
                f"replay: {exc}",
            )
            with store.transaction() as cur:
                record(store, cur, sub, [poison])
    else:
        outcome.extra = {"id": event.id, "version": event.version, "op": event.op}
        if dry_run:
            return outcome
        sink = sink_for(runtime, sub)
        with store.transaction() as cur:
            result = sink.write(entity, [row], cur)
            outcome.result = "applied" if result.applied else "stale"
            note = outcome.result + (" (corrected body)" if data is not None else "")
            _resolve(store, cur, failure, note)
        outcome.detail = note
    if not dry_run:
        details: dict[str, Any] = {
            "message_id": failure.message_id,
            "result": outcome.result,
            "detail": outcome.detail[:1000],
            **outcome.extra,
        }
        if data is not None:
            details["corrected_body"] = body.decode("utf-8", "replace")[:10_000]
        audit.write(store, "replay", sub.name, details, actor)
    return outcome


def _replay_job(
    runtime: Runtime, failure: Failure, *, data: bytes | None, actor: str | None, dry_run: bool
) -> ReplayOutcome:
    """A per-client migration job (``[jobs]``): enqueued again rather than applied here
    (a job worker runs it, with its source). Still not a valid job: the entry stays open
    with the new error. Enqueued, or its client verified since: the entry is replayed."""
    from backfill.jobs import requeue  # the jobs area judges its own messages

    sub = runtime.cfg.jobs_or_error().as_subscription(failure.entity or "")
    store = runtime.sql
    outcome = ReplayOutcome(sub.name, failure.message_id, "would-apply")
    try:
        published, outcome.detail = requeue(
            runtime, failure.data if data is None else data, dry_run=dry_run
        )
    except ValueError as exc:  # not a job message any more
        outcome.result, outcome.detail = "failed", str(exc)
        if not dry_run:
            poison = Poison(
                failure.message_id,
                failure.data,
                failure.attributes,
                failure.ordering_key,
                failure.attempts,
                f"replay: {exc}",
            )
            with store.transaction() as cur:
                record(store, cur, sub, [poison])
    else:
        if dry_run:
            return outcome
        outcome.result = "requeued" if published else "stale"
        with store.transaction() as cur:
            _resolve(store, cur, failure, f"{outcome.result}: {outcome.detail}")
    if not dry_run:
        details = {
            "message_id": failure.message_id,
            "result": outcome.result,
            "detail": outcome.detail[:1000],
        }
        audit.write(store, "replay", sub.name, details, actor)
    return outcome


def _resolve(store: SqlStore, cursor: StatementCursors, failure: Failure, note: str) -> None:
    d, q = store.dialect, store.dialect.quote
    cursor.execute(
        f"UPDATE {q(FAILURES.name)} SET {q('status')} = ?, "
        f"{q('resolved_at')} = {d.placeholder('datetime')}, {q('resolution')} = ? "
        f"WHERE {q('subscription')} = ? AND {q('message_id')} = ?",
        "replayed",
        d.to_db("datetime", now_utc()),
        note,
        failure.subscription,
        failure.message_id,
    )


def load_body(path: str) -> bytes:
    """A corrected body from a file, checked to be one JSON value before it is used."""
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EventError(f"{path}: the corrected body is not JSON: {exc}") from None
    return data
