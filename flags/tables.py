"""The flags area's bookkeeping tables: stage-change audit and shadow mismatches.

Both live in the SQL store next to the entity tables, so the audit survives the
migration and the console reads mismatches with the same connection as everything else.
"""

from __future__ import annotations

from stores.sql import Col, Table

AUDIT = Table(
    "cutover_flag_audit",
    (
        Col("id", "key", 36, nullable=False),
        Col("entity", "key", 128, nullable=False),
        Col("client_id", "key", 255, nullable=False),
        Col("from_stage", "key", 16, nullable=False),
        Col("to_stage", "key", 16, nullable=False),
        Col("actor", "string", 255, nullable=False),
        Col("reason", "text"),
        Col("forced", "bool", nullable=False),
        #: What the gate said when it was consulted (also when --force overrode it).
        Col("gate", "text"),
        Col("backend", "key", 16, nullable=False),
        Col("at", "datetime", nullable=False),
    ),
    ("id",),
    (("ix_cutover_flag_audit_client", ("entity", "client_id", "at")),),
)

MISMATCHES = Table(
    "cutover_shadow_mismatches",
    (
        Col("id", "key", 36, nullable=False),
        Col("entity", "key", 128, nullable=False),
        Col("client_id", "key", 255, nullable=False),
        Col("item_key", "string", 900, nullable=False),
        #: missing_in_new | missing_in_old | version | fields
        Col("kind", "key", 32, nullable=False),
        Col("fields", "json"),
        Col("old_version", "int"),
        Col("new_version", "int"),
        #: The stage the request was served at (shadow or new).
        Col("stage", "key", 16, nullable=False),
        Col("detected_at", "datetime", nullable=False),
    ),
    ("id",),
    (
        ("ix_cutover_shadow_mismatches_client", ("entity", "client_id", "detected_at")),
        ("ix_cutover_shadow_mismatches_time", ("detected_at",)),
    ),
)

TABLES = (AUDIT, MISMATCHES)
