"""The subscribers area's bookkeeping tables in the SQL store.

* ``subs_failures``: the poison-message log. A message that cannot be applied is kept
  here (raw body, attributes, error, attempts) and acked, so it never blocks the stream
  and an engineer can inspect and replay it later.
* ``subs_audit``: who added, synced or dropped a subscription, when, and what changed.
* ``subs_counters``: processed/applied/stale/failed counts and the last event time per
  subscription, updated in the batch's own transaction, so ``cutover subs list`` in
  another process (or on another machine) sees what every worker did.

Declared with the foundation's :class:`~stores.sql.Table` so one piece of code creates
and upgrades them in every dialect (``cutover db init`` or a worker's start-up).
"""

from __future__ import annotations

from stores.sql import Col, Table

FAILURES = Table(
    "subs_failures",
    (
        Col("subscription", "key", 255, nullable=False),
        Col("message_id", "key", 255, nullable=False),
        Col("entity", "key", 255),
        #: The body as received: UTF-8 text, or base64 when it is not valid text.
        Col("data", "text"),
        Col("data_encoding", "key", 16, nullable=False),
        Col("attributes", "json"),
        Col("ordering_key", "text"),
        Col("error", "text", nullable=False),
        Col("attempts", "int", nullable=False),
        Col("first_seen", "datetime", nullable=False),
        Col("last_seen", "datetime", nullable=False),
        #: "open" until a replay applies it, then "replayed".
        Col("status", "key", 16, nullable=False),
        Col("resolved_at", "datetime"),
        Col("resolution", "text"),
    ),
    ("subscription", "message_id"),
    (("ix_subs_failures_status", ("subscription", "status")),),
)

AUDIT = Table(
    "subs_audit",
    (
        Col("id", "key", 32, nullable=False),
        Col("at", "datetime", nullable=False),
        Col("actor", "key", 255, nullable=False),
        Col("action", "key", 32, nullable=False),
        Col("subscription", "key", 255, nullable=False),
        Col("details", "json"),
    ),
    ("id",),
    (("ix_subs_audit_subscription", ("subscription", "at")),),
)

COUNTERS = Table(
    "subs_counters",
    (
        Col("subscription", "key", 255, nullable=False),
        Col("processed", "int", nullable=False),
        Col("applied", "int", nullable=False),
        Col("stale", "int", nullable=False),
        Col("failed", "int", nullable=False),
        #: Newest ``occurred_at`` among the events applied or skipped so far.
        Col("last_event_at", "datetime"),
        #: When a worker last committed a batch.
        Col("last_batch_at", "datetime"),
    ),
    ("subscription",),
)

TABLES = (FAILURES, AUDIT, COUNTERS)
