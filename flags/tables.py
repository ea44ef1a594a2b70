"""The flags area's bookkeeping tables: stage-change audit, shadow mismatches,
shadow evidence (comparison counts per client and time bucket), the read API's
outcomes per client (responses and 5xx) and the rollout plans with their events.

All live in the SQL store next to the entity tables, so the audit survives the
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

#: Each change of a cohort's percentage (``cutover flags cohort``, kill): the audited
#: percentages that status compares with what the flags hold. The clients a step
#: switched are in AUDIT too, one row each.
COHORT_STEPS = Table(
    "cutover_flag_cohort_steps",
    (
        Col("id", "key", 36, nullable=False),
        Col("entity", "key", 128, nullable=False),
        Col("stage", "key", 16, nullable=False),
        Col("from_percent", "int", nullable=False),
        Col("to_percent", "int", nullable=False),
        #: Known clients whose stage the step changed, and how many failed the gate.
        Col("switched", "int", nullable=False),
        Col("blocked", "int", nullable=False),
        Col("actor", "string", 255, nullable=False),
        Col("reason", "text"),
        Col("forced", "bool", nullable=False),
        Col("gate", "text"),
        Col("backend", "key", 16, nullable=False),
        Col("at", "datetime", nullable=False),
    ),
    ("id",),
    (("ix_cutover_flag_cohort_steps_entity", ("entity", "at")),),
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

#: Shadow comparisons and their outcomes per entity, client, stage and time bucket,
#: added to by every API process (:mod:`flags.evidence`); the gate sums a window.
EVIDENCE = Table(
    "cutover_shadow_evidence",
    (
        Col("entity", "key", 128, nullable=False),
        Col("client_id", "key", 255, nullable=False),
        #: The stage the compared reads were served at (shadow or new).
        Col("stage", "key", 16, nullable=False),
        #: Start of the bucket (UTC, a multiple of its length since the epoch).
        Col("bucket_start", "datetime", nullable=False),
        Col("comparisons", "int", nullable=False),
        #: Comparisons that found at least one difference persisting after the re-check.
        Col("mismatches", "int", nullable=False),
        #: Items (keys) that differed, over those comparisons.
        Col("mismatched_items", "int", nullable=False),
        #: Comparisons that could not run (a store failed): evidence neither way.
        Col("errors", "int", nullable=False),
        Col("updated_at", "datetime", nullable=False),
    ),
    ("entity", "client_id", "stage", "bucket_start"),
    (("ix_cutover_shadow_evidence_time", ("bucket_start",)),),
)

#: The read API's responses per entity, client, stage and time bucket, at the stages
#: a rollout moves clients through (shadow, new): how many were served and how many of
#: them were server errors (5xx). Added to like EVIDENCE (:mod:`flags.evidence`).
OUTCOMES = Table(
    "cutover_read_outcomes",
    (
        Col("entity", "key", 128, nullable=False),
        Col("client_id", "key", 255, nullable=False),
        Col("stage", "key", 16, nullable=False),
        Col("bucket_start", "datetime", nullable=False),
        Col("served", "int", nullable=False),
        Col("server_errors", "int", nullable=False),
        Col("updated_at", "datetime", nullable=False),
    ),
    ("entity", "client_id", "stage", "bucket_start"),
    (("ix_cutover_read_outcomes_time", ("bucket_start",)),),
)

#: One rollout plan per entity (:mod:`flags.rollout`): its definition, where it is
#: (wave, phase, since when), what it last set, its guardrail figures and the lease of
#: the one ``rollout run`` that may act on it.
ROLLOUT_PLANS = Table(
    "cutover_rollout_plans",
    (
        Col("entity", "key", 128, nullable=False),
        Col("plan_id", "key", 36, nullable=False),
        #: waves (pilot clients, cohort percentages), bake and watch times.
        Col("definition", "json", nullable=False),
        #: planned | running | paused | done | aborted | stopped
        Col("state", "key", 16, nullable=False),
        #: Why it is paused, stopped or aborted (a guardrail with its figures, ...).
        Col("reason", "text"),
        #: Index of the current wave in the definition's waves.
        Col("wave", "int", nullable=False),
        #: pending | shadowing | baking | switching | watching | rolling_back
        Col("phase", "key", 16, nullable=False),
        Col("phase_at", "datetime"),
        Col("wave_started_at", "datetime"),
        #: The cohort percentages before the current wave (what a rollback restores).
        Col("before", "json"),
        #: The wave's counts when it started, subtracted from every later reading.
        Col("baseline", "json"),
        #: The cohort percentages the plan last set (anything else: changed outside).
        Col("expected", "json"),
        #: The last guardrail evaluation of the current wave (figures, limits, verdict).
        Col("guard", "json"),
        Col("owner", "string", 255),
        Col("lease_expires", "datetime"),
        Col("created_by", "string", 255, nullable=False),
        Col("created_at", "datetime", nullable=False),
        Col("updated_at", "datetime", nullable=False),
    ),
    ("entity",),
)

#: Every transition of every plan (started, shadowed, switched, tripped, rolled back,
#: paused, resumed, ...), with who and the figures: the plan's own history.
ROLLOUT_EVENTS = Table(
    "cutover_rollout_events",
    (
        Col("id", "key", 36, nullable=False),
        Col("entity", "key", 128, nullable=False),
        Col("plan_id", "key", 36, nullable=False),
        Col("wave", "int"),
        Col("event", "key", 32, nullable=False),
        Col("actor", "string", 255, nullable=False),
        Col("detail", "text"),
        Col("figures", "json"),
        Col("at", "datetime", nullable=False),
    ),
    ("id",),
    (("ix_cutover_rollout_events_plan", ("entity", "plan_id", "at")),),
)

TABLES = (AUDIT, COHORT_STEPS, MISMATCHES, EVIDENCE, OUTCOMES, ROLLOUT_PLANS, ROLLOUT_EVENTS)
