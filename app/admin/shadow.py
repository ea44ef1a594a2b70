"""Dark-read (shadow) mismatches per client, and the mismatch rate.

Mismatch records come from the SQL store (``cutover_shadow_mismatches``, written by
:mod:`app.shadow`), so every API process's findings count. Comparisons are only
counted by the Prometheus counter ``cutover_shadow_comparisons_total``, per entity and
in this process: the rate is therefore per entity and since this process started
(``None`` until a comparison ran here); per client the console shows the count of
recorded mismatches in the window.
"""

from __future__ import annotations

import weakref
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import REGISTRY

from app.shadow import MismatchRecorder
from cutover.clock import now_utc
from cutover.runtime import Runtime
from flags.tables import MISMATCHES
from stores.sql import SqlStore

from ._sql import count_by

#: Mismatches counted per client over this window.
WINDOW = timedelta(hours=24)
_COMPARISONS = "cutover_shadow_comparisons_total"


def comparisons_in_process(entity: str) -> dict[str, float]:
    """This process's shadow comparison counts of an entity, by outcome."""
    outcomes: dict[str, float] = {}
    for metric in REGISTRY.collect():
        if metric.name != _COMPARISONS.removesuffix("_total"):
            continue
        for sample in metric.samples:
            if sample.name == _COMPARISONS and sample.labels.get("entity") == entity:
                outcome = sample.labels.get("outcome", "")
                outcomes[outcome] = outcomes.get(outcome, 0.0) + sample.value
    return outcomes


def entity_rate(entity: str) -> dict[str, Any]:
    outcomes = comparisons_in_process(entity)
    compared = outcomes.get("same", 0.0) + outcomes.get("mismatch", 0.0)
    return {
        "comparisons": int(compared),
        "mismatched_comparisons": int(outcomes.get("mismatch", 0.0)),
        "errors": int(outcomes.get("error", 0.0)),
        "rate": round(outcomes.get("mismatch", 0.0) / compared, 4) if compared else None,
        "scope": "this API process, since it started",
    }


_READY: weakref.WeakSet[SqlStore] = weakref.WeakSet()


def _ensure_table(rt: Runtime) -> None:
    """Create the mismatch table once per store object (the console polls)."""
    if rt.sql not in _READY:
        rt.sql.ensure_schema([MISMATCHES])
        _READY.add(rt.sql)


def mismatch_counts(rt: Runtime, entity: str, *, since: datetime | None = None) -> dict[str, int]:
    """Recorded mismatches per client of an entity since ``since`` (default 24 h ago)."""
    name = rt.cfg.entity(entity).name
    _ensure_table(rt)
    start = since or now_utc() - WINDOW
    counts = count_by(
        rt.sql, MISMATCHES, "client_id", {"entity": name}, since=("detected_at", start)
    )
    return {str(k): v for k, v in counts.items()}


def recent(
    rt: Runtime, entity: str, client: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """The latest mismatch records, newest first (``MismatchRecorder.recent``)."""
    name = rt.cfg.entity(entity).name
    out = []
    for m in MismatchRecorder(rt.sql).recent(name, client, limit):
        record = asdict(m)
        record["detected_at"] = m.detected_at.isoformat()
        out.append(record)
    return out
