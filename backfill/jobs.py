"""Per-client migration jobs: the message, the job table, enqueueing and progress.

A *job* is "copy and verify client C of entity E". It travels as one Pub/Sub message on
the topic of ``[jobs]`` in ``cutover.toml`` and is run by :mod:`backfill.job_worker`
(``cutover jobs run``) through the backfill's own version-guarded path, then its
verification. This module holds what every side shares:

* the message: UTF-8 JSON, ``{"kind": "cutover.job", "v": 1, "entity", "client",
  "reason", "enqueued_at"}``, with attributes ``kind``, ``entity``, ``client``. A reader
  of version 1 ignores fields it does not know (additions keep the version); a message
  of another kind or version, or naming an unknown entity, is a bad message
  (:class:`JobMessageError`) and goes to the failure log with that reason;
* the job table (``backfill_jobs``, one row per client of an entity): state, lease
  (owner + expiry: the one conditional UPDATE that lets a single worker run a client),
  and when the job was last published, which is what deduplicates enqueues from any
  number of API processes and sweeps (:func:`enqueue`);
* the history of attempts (``backfill_job_attempts``) and :func:`status`, the figures
  of ``cutover jobs status`` and ``/metrics``.

A client is *migrated* when its ledger entry is ``verified`` (backfill complete, latest
full verification clean): enqueueing skips it, and a job that finds it so (and copied
from the same source data, see ``job_worker``) finishes at once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from core.clock import now_utc
from core.config import Config, ConfigError
from core.limits import LimitError, check_text
from core.redaction import redact
from stores.runtime import Runtime
from stores.sql import SqlStore, bookkeeping

from . import ledger
from .tables import JOB_ATTEMPTS, JOBS, LEDGER

KIND = "cutover.job"
VERSION = 1
REASONS = ("first-use", "sweep", "cli", "replay")
QUEUED, RUNNING, RETRYING, DONE, FAILED = "queued", "running", "retrying", "done", "failed"
STATES = (QUEUED, RUNNING, RETRYING, DONE, FAILED)
#: Outcomes of one attempt (``backfill_job_attempts.outcome``).
OUT_DONE, OUT_UNCHANGED, OUT_FAILED, OUT_HANDED_BACK = "done", "unchanged", "failed", "handed-back"


class JobMessageError(ValueError):
    """A job message that cannot be run as sent; the message says why."""


# -- the message ------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    entity: str
    client: str
    reason: str = "cli"
    enqueued_at: datetime = field(default_factory=now_utc)

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "kind": KIND,
                "v": VERSION,
                "entity": self.entity,
                "client": self.client,
                "reason": self.reason,
                "enqueued_at": self.enqueued_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            },
            ensure_ascii=False,
        ).encode("utf-8")

    @property
    def attributes(self) -> dict[str, str]:
        return {"kind": KIND, "entity": self.entity, "client": self.client}


def parse_job(data: bytes, config: Config) -> Job:
    """The job a message body carries, or :class:`JobMessageError` saying why not."""
    try:
        body = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise JobMessageError(f"not a UTF-8 JSON job message: {str(exc)[:300]}") from None
    except RecursionError:  # a job message is one flat object
        raise JobMessageError("not a job message: JSON nested too deeply") from None
    if not isinstance(body, dict):
        raise JobMessageError(f"a job message is a JSON object, not {type(body).__name__}")
    if body.get("kind") != KIND:
        raise JobMessageError(f"not a job message (kind {body.get('kind')!r}, want {KIND!r})")
    if body.get("v") != VERSION:
        raise JobMessageError(f"job message version {body.get('v')!r} is not supported ({VERSION})")
    entity, client = body.get("entity"), body.get("client")
    if not isinstance(entity, str) or entity not in config.entities:
        known = ", ".join(sorted(config.entities))
        raise JobMessageError(f"unknown entity {entity!r} (known: {known})")
    client = _check_client(client)
    reason = body.get("reason", "cli")
    if not isinstance(reason, str) or len(reason) > 32:
        raise JobMessageError(f"reason must be a short string, not {reason!r}")
    return Job(entity, client, reason, _parse_time(body.get("enqueued_at")))


def _check_client(client: Any) -> str:
    if not isinstance(client, str) or not client or len(client) > 255:
        raise JobMessageError(f"client must be a string of 1 to 255 characters, not {client!r:.80}")
    try:
        check_text(client)
    except LimitError as exc:
        raise JobMessageError(f"client id {exc}") from None
    return client


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise JobMessageError(f"enqueued_at must be an ISO 8601 time, not {value!r:.80}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise JobMessageError(f"enqueued_at is not an ISO 8601 time: {value!r:.80}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# -- enqueueing ------------------------------------------------------------------------
@dataclass
class Enqueued:
    """What :func:`enqueue` did: clients published (in order) and skipped, with why."""

    published: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    message_ids: dict[str, str] = field(default_factory=dict)


def _key(entity: str, client: str) -> dict[str, str]:
    return {"entity": entity, "client": client}


def _why_not(rec: Mapping[str, Any] | None, reason: str, window: timedelta, now: datetime) -> str:
    """Why a client's job must not be published again now ("" when it may)."""
    if rec is None:
        return ""
    state = rec["state"]
    if state == RUNNING and rec["lease_expires"] is not None and rec["lease_expires"] > now:
        return f"running on {rec['owner']}"
    recent = rec["enqueued_at"] is not None and rec["enqueued_at"] > now - window
    if state in (QUEUED, RETRYING) and recent:
        return f"queued at {rec['enqueued_at']:%Y-%m-%d %H:%M:%S}Z"
    if state == FAILED and reason not in ("cli", "replay"):
        return "failed: in the failure log (replay it after a fix, or enqueue it with --client)"
    return ""


def claim_enqueue(
    sql: SqlStore, entity: str, client: str, reason: str, window_s: float, now: datetime
) -> str:
    """Take the right to publish this client's job; "" when taken, else why not.

    Compare-and-set on the row's ``(state, enqueues)``: of any number of processes
    enqueueing the same client at once, exactly one wins; the others see why.
    """
    d = sql.dialect
    window = timedelta(seconds=window_s)
    values = {"state": QUEUED, "reason": reason, "enqueued_at": now, "updated_at": now}
    with sql.transaction() as cur:
        recs = bookkeeping.select(cur, d, JOBS, _key(entity, client))
        rec = recs[0] if recs else None
        why = _why_not(rec, reason, window, now)
        if why:
            return why
        if rec is None:
            new = {**_key(entity, client), **values, "enqueues": 1, "attempts": 0, "copies": 0}
            return "" if bookkeeping.insert_missing(cur, d, JOBS, new) else "queued meanwhile"
        guard = {**_key(entity, client), "state": rec["state"], "enqueues": rec["enqueues"]}
        won = bookkeeping.update(cur, d, JOBS, values, guard, add={"enqueues": 1})
        return "" if won else "queued meanwhile"


def _unclaim(sql: SqlStore, entity: str, client: str, now: datetime) -> None:
    """A publish failed: let the next enqueue of this client go ahead at once."""
    with sql.transaction() as cur:
        bookkeeping.update(
            cur,
            sql.dialect,
            JOBS,
            {"enqueued_at": None, "updated_at": now},
            {**_key(entity, client), "state": QUEUED, "enqueued_at": now},
        )


def enqueue(
    runtime: Runtime,
    entity: str,
    clients: Iterable[str],
    *,
    reason: str = "cli",
    window_s: float = 3600.0,
    dry_run: bool = False,
    publisher: Any = None,
) -> Enqueued:
    """Publish one job per client that needs one, in the order given.

    Skipped: clients whose ledger says ``verified``, and clients whose job is running
    or was queued less than ``window_s`` ago (by any process: see
    :func:`claim_enqueue`). A publish that fails gives the claim back and is raised
    after the others have settled, so nothing is silently left unqueued.
    """
    from core import pubsub

    cfg = runtime.cfg
    jobs_cfg = cfg.jobs_or_error()
    cfg.entity(entity)
    sql = runtime.sql
    ledger.ensure_tables(sql)
    wanted = list(dict.fromkeys(clients))
    verified = _verified(sql, entity, wanted)
    result = Enqueued()
    now = now_utc()
    chosen: list[str] = []
    for client in wanted:
        if client in verified:
            result.skipped[client] = "verified"
            continue
        why = "" if dry_run else claim_enqueue(sql, entity, client, reason, window_s, now)
        if why:
            result.skipped[client] = why
        else:
            chosen.append(client)
    if dry_run or not chosen:
        result.published = chosen
        return result
    client_ = publisher or pubsub.publisher(runtime.settings, ordering=False)
    topic = pubsub.topic_path(runtime.settings, jobs_cfg.topic)
    futures = []
    for client in chosen:
        job = Job(entity, client, reason, now)
        futures.append((client, client_.publish(topic, job.to_bytes(), **job.attributes)))
    errors: list[str] = []
    for client, future in futures:
        try:
            result.message_ids[client] = future.result(timeout=60)
        except Exception as exc:  # every publish settles before the first error is raised
            _unclaim(sql, entity, client, now)
            errors.append(f"{client}: {redact(str(exc))}")
            continue
        result.published.append(client)
    _note_message_ids(sql, entity, result.message_ids)
    if errors:
        raise JobPublishError(
            f"{len(errors)} of {len(futures)} job(s) of {entity} could not be published "
            f"(topic {jobs_cfg.topic}; `cutover jobs add` creates it): {errors[0]}"
        )
    return result


def _verified(sql: SqlStore, entity: str, clients: list[str]) -> set[str]:
    """Which of these clients the ledger says are verified (one look-up each for a few)."""
    if len(clients) <= 20:
        found = (ledger.client_status(sql, entity, c) for c in clients)
        return {e.client for e in found if e is not None and e.state == ledger.VERIFIED}
    return {e.client for e in ledger.entries(sql, entity) if e.state == ledger.VERIFIED}


class JobPublishError(ConfigError):
    """Publishing failed (topic missing, server down); the claims were given back."""


def _note_message_ids(sql: SqlStore, entity: str, ids: Mapping[str, str]) -> None:
    if not ids:
        return
    with sql.transaction() as cur:
        for client in sorted(ids):
            bookkeeping.update(
                cur, sql.dialect, JOBS, {"message_id": ids[client]}, _key(entity, client)
            )


# -- the lease (one worker per client) --------------------------------------------------
def new_attempt_id() -> str:
    return uuid.uuid4().hex[:16]


def acquire(
    sql: SqlStore,
    entity: str,
    client: str,
    *,
    owner: str,
    attempt_id: str,
    ttl_s: float,
    message_id: str,
    delivery_attempt: int,
) -> bool:
    """Take the client's job lease (free, or expired) and open an attempt; True if won.

    One conditional UPDATE decides, and it is the transaction's first statement
    (SQLite cannot upgrade a read to a write while another connection writes).
    """
    d = sql.dialect
    q = d.quote
    now = now_utc()
    values = {
        "state": RUNNING,
        "owner": owner,
        "lease_expires": now + timedelta(seconds=ttl_s),
        "attempt_id": attempt_id,
        "started_at": now,
        "updated_at": now,
    }
    with sql.transaction() as cur:
        won = bookkeeping.update(
            cur,
            d,
            JOBS,
            values,
            _key(entity, client),
            extra=f"{q('owner')} IS NULL OR {q('lease_expires')} < ?",
            extra_params=[d.to_db("datetime", now)],
        )
        if not won:
            fresh = {**_key(entity, client), **values, "enqueues": 0, "attempts": 0, "copies": 0}
            won = bookkeeping.insert_missing(cur, d, JOBS, fresh)
        if won:
            bookkeeping.insert(
                cur,
                d,
                JOB_ATTEMPTS,
                {
                    "attempt_id": attempt_id,
                    **_key(entity, client),
                    "owner": owner,
                    "message_id": message_id,
                    "delivery_attempt": delivery_attempt,
                    "started_at": now,
                    "heartbeat_at": now,
                    "copied": False,
                },
            )
    return bool(won)


def renew(sql: SqlStore, entity: str, client: str, attempt_id: str, ttl_s: float) -> bool:
    """Extend a held lease (and the attempt's last sign of life); False when lost."""
    now = now_utc()
    with sql.transaction() as cur:
        held = bookkeeping.update(
            cur,
            sql.dialect,
            JOBS,
            {"lease_expires": now + timedelta(seconds=ttl_s), "updated_at": now},
            {**_key(entity, client), "attempt_id": attempt_id, "state": RUNNING},
        )
        if held:
            bookkeeping.update(
                cur, sql.dialect, JOB_ATTEMPTS, {"heartbeat_at": now}, {"attempt_id": attempt_id}
            )
    return bool(held)


def holder(sql: SqlStore, entity: str, client: str) -> tuple[str | None, datetime | None]:
    """Who holds the client's lease and until when (``(None, None)``: nobody)."""
    with sql.transaction() as cur:
        recs = bookkeeping.select(cur, sql.dialect, JOBS, _key(entity, client))
    if not recs or recs[0]["owner"] is None:
        return None, None
    return recs[0]["owner"], recs[0]["lease_expires"]


def note_copy(sql: SqlStore, entity: str, client: str, attempt_id: str) -> None:
    """The attempt starts a copy (counted: the tests prove each client's copies)."""
    with sql.transaction() as cur:
        bookkeeping.update(
            cur,
            sql.dialect,
            JOBS,
            {},
            {**_key(entity, client), "attempt_id": attempt_id},
            add={"copies": 1},
        )
        bookkeeping.update(
            cur, sql.dialect, JOB_ATTEMPTS, {"copied": True}, {"attempt_id": attempt_id}
        )


def finish(
    sql: SqlStore,
    entity: str,
    client: str,
    attempt_id: str,
    *,
    outcome: str,
    rows: int = 0,
    error: str = "",
    final: bool = False,
) -> int:
    """End an attempt and give the lease back; the client's failed runs so far.

    ``outcome`` done: the job state becomes done (failures reset). failed: retrying,
    or failed when ``final`` (it is then in the failure log). handed-back: queued again
    (stopped, or its delivery ran out of lease time; it resumes from its checkpoint).
    """
    d = sql.dialect
    now = now_utc()
    values: dict[str, Any] = {"owner": None, "lease_expires": None, "updated_at": now}
    add: dict[str, int] = {}
    if outcome == OUT_DONE:
        values.update(state=DONE, attempts=0, rows=rows, finished_at=now, last_error=None)
    elif outcome == OUT_FAILED:
        values.update(state=FAILED if final else RETRYING, last_error=error[:4000])
        add["attempts"] = 1
    else:
        values.update(state=QUEUED)
    where = {**_key(entity, client), "attempt_id": attempt_id}
    with sql.transaction() as cur:
        started = bookkeeping.select(cur, d, JOBS, where)
        if started and outcome == OUT_DONE and started[0]["started_at"] is not None:
            values["seconds"] = (now - started[0]["started_at"]).total_seconds()
        bookkeeping.update(cur, d, JOBS, values, where, add=add)
        bookkeeping.update(
            cur,
            d,
            JOB_ATTEMPTS,
            {
                "finished_at": now,
                "heartbeat_at": now,
                "outcome": outcome,
                "rows": rows,
                "error": error[:4000] or None,
            },
            {"attempt_id": attempt_id},
        )
        recs = bookkeeping.select(cur, d, JOBS, _key(entity, client))
    return int(recs[0]["attempts"] or 0) if recs else 0


def record_unchanged(
    sql: SqlStore, entity: str, client: str, *, owner: str, message_id: str, delivery_attempt: int
) -> None:
    """A job that found its client migrated and unchanged: done at once, no lease.

    A lease that expired (its worker died after recording the verification, before
    closing the job) is closed too, so the row does not stay ``running``.
    """
    d = sql.dialect
    q = d.quote
    now = now_utc()
    with sql.transaction() as cur:
        bookkeeping.update(
            cur,
            d,
            JOBS,
            {
                "state": DONE,
                "owner": None,
                "lease_expires": None,
                "updated_at": now,
                "finished_at": now,
            },
            _key(entity, client),
            extra=f"{q('owner')} IS NULL OR {q('lease_expires')} < ?",
            extra_params=[d.to_db("datetime", now)],
        )
        bookkeeping.insert(
            cur,
            d,
            JOB_ATTEMPTS,
            {
                "attempt_id": new_attempt_id(),
                **_key(entity, client),
                "owner": owner,
                "message_id": message_id,
                "delivery_attempt": delivery_attempt,
                "started_at": now,
                "heartbeat_at": now,
                "finished_at": now,
                "outcome": OUT_UNCHANGED,
                "copied": False,
                "rows": 0,
            },
        )


def requeue(runtime: Runtime, body: bytes, *, dry_run: bool = False) -> tuple[bool, str]:
    """A replay from the failure log: the job is published again, its client's failed
    runs forgotten. ``(published, what happened)``; a body that is not a job message
    raises :class:`JobMessageError`. A client verified since is not published again."""
    job = parse_job(body, runtime.cfg)
    name = f"{job.entity}/{job.client}"
    if dry_run:
        return False, f"would enqueue {name} again"
    sql = runtime.sql
    ledger.ensure_tables(sql)
    with sql.transaction() as cur:
        bookkeeping.update(
            cur,
            sql.dialect,
            JOBS,
            {"attempts": 0, "updated_at": now_utc()},
            _key(job.entity, job.client),
            extra=f"{sql.dialect.quote('owner')} IS NULL",
        )
    done = enqueue(runtime, job.entity, [job.client], reason="replay", window_s=0)
    if done.published:
        return True, f"{name} enqueued again as message {done.message_ids.get(job.client)}"
    return False, f"{name} not enqueued again: {done.skipped.get(job.client, 'skipped')}"


def failed_runs(sql: SqlStore, entity: str, client: str) -> int:
    with sql.transaction() as cur:
        recs = bookkeeping.select(cur, sql.dialect, JOBS, _key(entity, client))
    return int(recs[0]["attempts"] or 0) if recs else 0


# -- progress ---------------------------------------------------------------------------
#: The window over which ``status`` measures the rate (and so the ETA).
RATE_WINDOW_S = 600.0


@dataclass
class JobsStatus:
    """The figures of ``cutover jobs status`` and ``/metrics`` for one entity."""

    entity: str
    states: dict[str, int]
    #: Running jobs whose lease has expired (their worker is probably gone).
    stale: int
    #: Undelivered messages of the jobs subscription, where the server reports it.
    backlog: int | None
    #: Clients the ledger knows that are not verified yet.
    not_migrated: int
    jobs_per_s: float
    rows_per_s: float
    eta_s: float | None
    running: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return (
            self.states.get(QUEUED, 0) + self.states.get(RETRYING, 0) + self.states.get(RUNNING, 0)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "entity": self.entity,
            "queued": self.states.get(QUEUED, 0),
            "running": self.states.get(RUNNING, 0),
            "retrying": self.states.get(RETRYING, 0),
            "done": self.states.get(DONE, 0),
            "failed": self.states.get(FAILED, 0),
            "stale_leases": self.stale,
            "backlog": self.backlog,
            "not_migrated": self.not_migrated,
            "jobs_per_s": self.jobs_per_s,
            "rows_per_s": self.rows_per_s,
            "eta_s": self.eta_s,
            "running_jobs": self.running,
            "failed_jobs": self.failed,
        }


def status(
    sql: SqlStore, entity: str, *, backlog: int | None = None, window_s: float = RATE_WINDOW_S
) -> JobsStatus:
    """Counts per state, the rate of the jobs that copied in the last ``window_s`` (rows
    and jobs per second, from their attempts) and the ETA of what is left at that rate."""
    ledger.ensure_tables(sql)
    d = sql.dialect
    now = now_utc()
    since = now - timedelta(seconds=window_s)
    with sql.transaction() as cur:
        states = bookkeeping.count_by(cur, d, JOBS, "state", {"entity": entity})
        active = bookkeeping.select(
            cur,
            d,
            JOBS,
            {"entity": entity},
            extra=f"{d.quote('state')} IN (?, ?)",
            extra_params=[RUNNING, FAILED],
            order_by=("client",),
        )
        recent = bookkeeping.select(
            cur,
            d,
            JOB_ATTEMPTS,
            {"entity": entity, "outcome": OUT_DONE},
            extra=f"{d.quote('finished_at')} >= ?",
            extra_params=[d.to_db("datetime", since)],
        )
        ledger_states = bookkeeping.count_by(cur, d, LEDGER, "state", {"entity": entity})
    stale = sum(
        1
        for r in active
        if r["state"] == RUNNING and (r["lease_expires"] is None or r["lease_expires"] < now)
    )
    span = 0.0
    if recent:
        first = min(r["started_at"] for r in recent if r["started_at"] is not None)
        span = max((now - max(first, since)).total_seconds(), 1e-3)
    jobs_per_s = len(recent) / span if span else 0.0
    rows_per_s = sum(int(r["rows"] or 0) for r in recent) / span if span else 0.0
    result = JobsStatus(
        entity=entity,
        states={s: int(states.get(s, 0)) for s in STATES},
        stale=stale,
        backlog=backlog,
        not_migrated=sum(n for state, n in ledger_states.items() if state != ledger.VERIFIED),
        jobs_per_s=jobs_per_s,
        rows_per_s=rows_per_s,
        eta_s=None,
    )
    if jobs_per_s > 0:
        result.eta_s = result.remaining / jobs_per_s
    elif result.remaining == 0:
        result.eta_s = 0.0
    for r in active:
        item = {
            "client": r["client"],
            "owner": r["owner"],
            "since": r["started_at"],
            "lease_expires": r["lease_expires"],
            "attempts": r["attempts"],
            "last_error": r["last_error"],
        }
        (result.running if r["state"] == RUNNING else result.failed).append(item)
    return result


def attempts_of(sql: SqlStore, entity: str, client: str) -> list[dict[str, Any]]:
    """Every attempt of one client's jobs, oldest first."""
    ledger.ensure_tables(sql)
    with sql.transaction() as cur:
        return bookkeeping.select(
            cur, sql.dialect, JOB_ATTEMPTS, _key(entity, client), order_by=("started_at",)
        )


def jobs_of(sql: SqlStore, entity: str) -> list[dict[str, Any]]:
    """The job rows of an entity, by client."""
    ledger.ensure_tables(sql)
    with sql.transaction() as cur:
        return bookkeeping.select(cur, sql.dialect, JOBS, {"entity": entity}, order_by=("client",))


def sweep_order(
    candidates: Iterable[str],
    *,
    first: Sequence[str] = (),
    counts: Mapping[str, int] | None = None,
) -> list[str]:
    """The sweep's order: ``first`` (e.g. the most active clients) in its order, then
    the rest busiest first when their sizes are known, else by id."""
    pool = set(candidates)
    head = [c for c in dict.fromkeys(first) if c in pool]
    rest = pool.difference(head)
    sizes = counts or {}
    return head + sorted(rest, key=lambda c: (-sizes.get(c, 0), c))
