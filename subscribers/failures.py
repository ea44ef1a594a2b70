"""The poison-message log: record, list, show and replay.

A message the handler cannot apply (not JSON, fails the contract or its limits,
unknown entity, a value of the wrong type, a row a store rejects, or anything else that
one message alone makes fail) is recorded in ``subs_failures`` and then acked: one bad
message never blocks the stream. The record keeps the raw body, attributes, message
id, error, attempt count and first/last seen, so an engineer can fix the cause (the
producer, the config, or the body itself) and replay it. A replay is judged and written
as the stream does it: the same decoding, the same version-guarded write, the same
containment (a body that still fails stays open with the new reason), so a replayed
event older than the stored row changes nothing.

Recording never fails because of what a message holds: a body of any bytes is kept
(base64 when it is not text every store keeps as it is), and the texts stored with it
(error, ordering key, attributes, message id) are cleaned: NUL, lone surrogates and
characters from U+100000 up written as escapes, lengths bounded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from core.clock import now_utc
from core.config import ConfigError, Subscription
from core.events import EventError
from core.redaction import redact
from stores.mapping import Row
from stores.runtime import Runtime
from stores.sql import SqlStore, StatementCursors, StoreUnavailable, bookkeeping

from . import audit
from .decode import decode, reason
from .sinks import blame, sink_for
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
    #: Store it plainly: ASCII text only, the body in base64 (the last resort when the
    #: failure log refused the entry as it was).
    plain: bool = False


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
#: Characters not every store keeps as they are: NUL (PostgreSQL text), lone surrogates
#: (not UTF-8 or UTF-16), U+100000 and up (the SQLite stand-in's driver cuts text there).
_UNSAFE = re.compile("[\x00\ud800-\udfff\U00100000-\U0010ffff]")
#: Characters of an error kept in the log (the reason comes first; drivers may go on
#: quoting the whole statement).
MAX_ERROR_CHARS = 4000
#: Characters kept of an ordering key and of each attribute (Pub/Sub allows 1 KiB).
MAX_TEXT_CHARS = 1024
#: The message id is the entry's key (a column of 255).
MAX_ID_CHARS = 255


def _encode_body(data: bytes, plain: bool = False) -> tuple[str, str]:
    """Text when the body is UTF-8 that every store keeps as it is, else base64."""
    if not plain:
        try:
            text = data.decode("utf-8")
            if _UNSAFE.search(text) is None:
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


def clean(text: str, limit: int = MAX_ERROR_CHARS, *, plain: bool = False) -> str:
    """``text`` as every store keeps it: unsafe characters escaped, at most about
    ``limit`` characters (a longer text ends with how much was cut); ASCII if ``plain``.
    A cleaned text holds no unsafe character, so cleaning it again only shortens it.
    """
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text) - limit:,} more characters)"
    if not text.isascii():
        text = _UNSAFE.sub(_escape, text)
        if plain:
            text = text.encode("ascii", "backslashreplace").decode("ascii")
    elif "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return text


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def _key(message_id: str) -> str:
    """The message id as the entry's key: cleaned; a longer one is cut and ends with a
    hash of the whole, so two long ids stay two entries. A key maps to itself."""
    text = clean(message_id, 10 * MAX_ID_CHARS)
    if len(text) <= MAX_ID_CHARS:
        return text
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return f"{text[: MAX_ID_CHARS - 18]}~{digest}"


def _attributes(attributes: Mapping[str, str], plain: bool) -> dict[str, str]:
    if plain:
        return {}
    return {
        clean(str(k), MAX_TEXT_CHARS): clean(str(v), MAX_TEXT_CHARS) for k, v in attributes.items()
    }


def record(
    store: SqlStore, cursor: StatementCursors, subscription: Subscription, poisons: Sequence[Poison]
) -> None:
    """Write poison messages in the caller's transaction (the batch's, for the SQL sink).

    A message seen again (redelivered, or replayed and still failing) keeps its first
    record: its attempts grow, its error and last-seen time are updated, and it is open
    again. What is stored is cleaned (see the module docstring), so no body and no
    error text can make this fail.
    """
    d, q = store.dialect, store.dialect.quote
    now = now_utc()
    for poison in poisons:
        message_id = _key(poison.message_id)
        error = clean(poison.error, plain=poison.plain)
        cursor.execute(
            f"UPDATE {q(FAILURES.name)} SET {q('attempts')} = {q('attempts')} + 1, "
            f"{q('error')} = ?, {q('last_seen')} = {d.placeholder('datetime')}, "
            f"{q('status')} = ? WHERE {q('subscription')} = ? AND {q('message_id')} = ?",
            error,
            d.to_db("datetime", now),
            "open",
            subscription.name,
            message_id,
        )
        if cursor.rowcount:
            continue
        body, encoding = _encode_body(poison.data, poison.plain)
        values = {
            "subscription": subscription.name,
            "message_id": message_id,
            "entity": subscription.entity,
            "data": body,
            "data_encoding": encoding,
            "attributes": _attributes(poison.attributes, poison.plain),
            "ordering_key": clean(poison.ordering_key, MAX_TEXT_CHARS, plain=poison.plain),
            "error": error,
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
    is judged again under the current config. Whatever the body does while it is
    decoded or written, it is judged as the stream judges it: still poison, the entry
    stays open with attempts + 1 and the new error. Applied or stale (a newer version is
    already stored): the entry is marked replayed, in the same transaction as the row
    for the SQL sink. A failure of a store raises :class:`StoreUnavailable` and changes
    nothing. Every replay that writes is audited.
    """
    jobs = runtime.cfg.jobs
    if jobs is not None and failure.subscription == jobs.subscription:
        return _replay_job(runtime, failure, data=data, actor=actor, dry_run=dry_run)
    sub = runtime.cfg.subscription(failure.subscription)
    entity = runtime.cfg.entity(sub.entity)
    store = runtime.sql
    body = failure.data if data is None else data
    outcome = ReplayOutcome(sub.name, failure.message_id, "would-apply")
    error: str | None = None
    try:
        event, row = decode(runtime.cfg, entity, body)
    except Exception as exc:  # as the handler does: any failure is this body's
        error = reason(exc)
    else:
        outcome.extra = {"id": event.id, "version": event.version, "op": event.op}
        if dry_run:
            return outcome
        error = _apply(runtime, failure, row, data is not None, outcome)
    if error is not None:
        outcome.result, outcome.detail = "failed", clean(error)
        if not dry_run:
            _still_open(store, sub, failure, f"replay: {error}")
    if not dry_run:
        details: dict[str, Any] = {
            "message_id": failure.message_id,
            "result": outcome.result,
            "detail": outcome.detail[:1000],
            **outcome.extra,
        }
        if data is not None:
            details["corrected_body"] = clean(body.decode("utf-8", "replace"), 10_000)
        audit.write(store, "replay", sub.name, details, actor)
    return outcome


def _apply(
    runtime: Runtime, failure: Failure, row: Row, corrected: bool, outcome: ReplayOutcome
) -> str | None:
    """Write the row and close the entry in one transaction; the reason the row is
    poison when the store refuses it (judged by :func:`~subscribers.sinks.blame`)."""
    sub = runtime.cfg.subscription(failure.subscription)
    entity = runtime.cfg.entity(sub.entity)
    store, sink = runtime.sql, sink_for(runtime, sub)
    note = ""
    for attempt in (1, 2):  # twice, as the handler does: a driver's glitch does not repeat
        try:
            with store.transaction() as cur:
                result = sink.write(entity, [row], cur)
                applied: Literal["applied", "stale"] = "applied" if result.applied else "stale"
                note = applied + (" (corrected body)" if corrected else "")
                _resolve(store, cur, failure, note)
            break
        except Exception as exc:
            if sink.store_failure(exc):
                raise StoreUnavailable(
                    f"replay of {failure.message_id!r} changed nothing: {sink.label} failed: "
                    f"{type(exc).__name__}: {redact(str(exc)[:1000])}"
                ) from exc
            if attempt == 2:
                return blame(sink, entity, exc)
    outcome.result, outcome.detail = applied, note
    return None


def _still_open(store: SqlStore, sub: Subscription, failure: Failure, error: str) -> None:
    """The entry stays open: one more attempt, the new error."""
    poison = Poison(
        failure.message_id,
        failure.data,
        failure.attributes,
        failure.ordering_key,
        failure.attempts,
        error,
    )
    with store.transaction() as cur:
        record(store, cur, sub, [poison])


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
    except RecursionError:
        pass  # JSON nested deeper than Python parses: the replay refuses it with the reason
    except ValueError as exc:  # not UTF-8, not JSON
        raise EventError(f"{path}: the corrected body is not JSON: {str(exc)[:300]}") from None
    return data
