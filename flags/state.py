"""Which clients cutover knows, and who still reads the old store.

Known clients are what a cohort step is computed over (and what the gate checks):
every client either store holds for the entity, every client the backfill ledger
lists, and every client a flag list names. A client nobody has seen yet (a new
tenant) follows the cohorts without a gate check; that is the nature of a percentage.

The legacy subscription keeps RethinkDB in sync; dropping it is safe only when no
client reads RethinkDB any more. A client reads it at ``old`` and at ``shadow``. The
answer comes from the flag backend itself (the Unleash Admin API or the flag file),
not from an SDK cache, and any failure to read it raises: a guard must fail closed.
"""

from __future__ import annotations

from stores.runtime import Runtime

from .backend import FlagBackend, backend_for
from .stages import Stage


def known_clients(runtime: Runtime, entity_name: str) -> set[str]:
    """Every client either store holds (tombstones included) or the ledger lists."""
    from backfill.ledger import entries

    entity = runtime.cfg.entity(entity_name)
    return (
        set(runtime.sql.clients(entity))
        | set(runtime.rethink.count_per_client(entity))
        | {e.client for e in entries(runtime.sql, entity.name)}
    )


def clients_reading_old_store(
    runtime: Runtime, entity_name: str, backend: FlagBackend | None = None
) -> list[str]:
    """Sorted ids of every known client of the entity whose stage is old or shadow.

    Known clients: :func:`known_clients` plus any a flag list names (held-back
    clients included).
    """
    entity = runtime.cfg.entity(entity_name)
    owned = backend is None
    flags_backend = backend or backend_for(runtime.settings)
    try:
        flags = flags_backend.read(entity.name)
    finally:
        if owned:
            flags_backend.close()
    known = known_clients(runtime, entity.name) | flags.listed_clients()
    return sorted(c for c in known if flags.stage_of(c) is not Stage.NEW)
