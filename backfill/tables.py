"""The backfill's bookkeeping tables, kept in the SQL store next to the entity tables.

Keeping them in the same database as the entity tables is what makes the backfill
crash-safe: a batch of rows, its checkpoint, its ledger counts and its bad-document
records commit in ONE transaction, so after any crash (even SIGKILL) the stored
checkpoint describes exactly the rows that are in the table.
"""

from __future__ import annotations

from stores.sql import Col, Table

RUNS = Table(
    "backfill_runs",
    (
        Col("run_id", "key", 64, nullable=False),
        Col("entity", "key", 128, nullable=False),
        Col("source", "text"),  # what was read, no secrets (JSON)
        Col("selection", "text"),  # the clients asked for (JSON list) or null = all
        Col("status", "key", 16, nullable=False),  # running | done
        Col("partitions", "int"),
        Col("created_at", "datetime"),
        Col("updated_at", "datetime"),
        Col("finished_at", "datetime"),
    ),
    ("run_id",),
    (("ix_backfill_runs_entity", ("entity", "status")),),
)

#: One row per unit of work: its lease (owner + expiry) and its checkpoint together,
#: so the heartbeat, the ownership check and the checkpoint are a single UPDATE.
PARTITIONS = Table(
    "backfill_partitions",
    (
        Col("run_id", "key", 64, nullable=False),
        Col("part", "key", 300, nullable=False),
        Col("entity", "key", 128, nullable=False),
        Col("ord", "int", nullable=False),  # claim order (--active-first puts busy clients first)
        Col("client", "key", 255),  # set for per-client partitions
        Col("spec", "json"),  # source-specific bounds (client, byte range, sweep)
        Col("status", "key", 16, nullable=False),  # pending | done
        Col("owner", "key", 255),
        Col("lease_expires", "datetime"),
        Col("position", "text"),  # where to resume: last key (JSON) or a byte offset
        Col("last_key", "text"),
        Col("est_rows", "int"),  # size estimate for progress and ETA
        Col("rows_read", "int"),
        Col("rows_applied", "int"),
        Col("rows_stale", "int"),
        Col("bad_docs", "int"),
        Col("batches", "int"),
        Col("started_at", "datetime"),
        Col("updated_at", "datetime"),
        Col("finished_at", "datetime"),
    ),
    ("run_id", "part"),
)

#: Pause/resume: one row per entity, read by every worker once per batch.
CONTROL = Table(
    "backfill_control",
    (
        Col("entity", "key", 128, nullable=False),
        Col("paused", "bool", nullable=False),
        Col("reason", "text"),
        Col("updated_at", "datetime"),
    ),
    ("entity",),
)

#: Documents that could not be mapped: never dropped silently, listed by key.
BAD_DOCS = Table(
    "backfill_bad_docs",
    (
        Col("run_id", "key", 64, nullable=False),
        Col("ref", "key", 380, nullable=False),  # the key, or part@offset when there is none
        Col("entity", "key", 128, nullable=False),
        Col("doc_key", "text"),
        Col("client", "text"),
        Col("error", "text"),
        Col("recorded_at", "datetime"),
    ),
    ("run_id", "ref"),
)

#: The per-client migration ledger the cutover gate reads (see backfill.ledger).
LEDGER = Table(
    "backfill_ledger",
    (
        Col("entity", "key", 128, nullable=False),
        Col("client", "key", 255, nullable=False),
        Col("state", "key", 16, nullable=False),  # not_started | copying | copied | verified
        Col("run_id", "key", 64),
        Col("rows_copied", "int"),
        Col("rows_source", "int"),
        Col("copy_started_at", "datetime"),
        Col("copied_at", "datetime"),
        Col("copy_seconds", "float"),
        Col("verified_at", "datetime"),  # when the LATEST verification finished (any result)
        Col("last_verification_clean", "bool"),
        Col("last_verification_mode", "key", 16),
        Col("differences", "int"),
        Col("rows_checked", "int"),
        Col("last_clean_at", "datetime"),
        Col("updated_at", "datetime"),
    ),
    ("entity", "client"),
)

#: History of verifications, one row per client per verification.
VERIFICATIONS = Table(
    "backfill_verifications",
    (
        Col("verification_id", "key", 64, nullable=False),
        Col("client", "key", 255, nullable=False),
        Col("entity", "key", 128, nullable=False),
        Col("mode", "key", 16),
        Col("started_at", "datetime"),
        Col("finished_at", "datetime"),
        Col("rows_checked", "int"),
        Col("differences", "int"),
        Col("clean", "bool"),
        Col("by_kind", "json"),
        Col("report_path", "text"),
    ),
    ("verification_id", "client"),
    (("ix_backfill_verifications_entity", ("entity", "client")),),
)

#: Per-client migration jobs (see backfill.jobs): one row per client of an entity, the
#: job's state, its lease (owner + expiry: one worker at a time) and when it was last
#: published (the enqueue dedup window, shared by every API process and the sweep).
JOBS = Table(
    "backfill_jobs",
    (
        Col("entity", "key", 128, nullable=False),
        Col("client", "key", 255, nullable=False),
        Col("state", "key", 16, nullable=False),  # queued | running | retrying | done | failed
        Col("reason", "key", 32),  # why it was last enqueued: first-use | sweep | cli | replay
        Col("enqueued_at", "datetime"),
        Col("enqueues", "int"),
        Col("message_id", "key", 255),  # of the last publish
        Col("owner", "key", 255),
        Col("lease_expires", "datetime"),
        Col("attempt_id", "key", 32),  # the attempt holding the lease
        Col("attempts", "int"),  # failed runs since the last success or replay
        Col("copies", "int"),  # copies this client's jobs started, ever
        Col("rows", "int"),  # rows copied by the last successful job
        Col("seconds", "float"),
        Col("started_at", "datetime"),
        Col("finished_at", "datetime"),
        Col("last_error", "text"),
        Col("updated_at", "datetime"),
    ),
    ("entity", "client"),
    (("ix_backfill_jobs_state", ("entity", "state")),),
)

#: Every run of a job, one row each: who ran it, its last sign of life, how it ended
#: (null while running, or when its worker died). Rates and ETAs are computed from it.
JOB_ATTEMPTS = Table(
    "backfill_job_attempts",
    (
        Col("attempt_id", "key", 32, nullable=False),
        Col("entity", "key", 128, nullable=False),
        Col("client", "key", 255, nullable=False),
        Col("owner", "key", 255),
        Col("message_id", "key", 255),
        Col("delivery_attempt", "int"),
        Col("started_at", "datetime"),
        Col("heartbeat_at", "datetime"),
        Col("finished_at", "datetime"),
        Col("outcome", "key", 16),  # done | unchanged | failed | handed-back | null
        Col("copied", "bool"),  # whether this attempt ran a copy
        Col("rows", "int"),
        Col("error", "text"),
    ),
    ("attempt_id",),
    (("ix_backfill_job_attempts_client", ("entity", "client")),),
)

TABLES = (RUNS, PARTITIONS, CONTROL, BAD_DOCS, LEDGER, VERIFICATIONS, JOBS, JOB_ATTEMPTS)
