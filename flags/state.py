"""Who still reads the old store: the legacy-drop guard's question.

The legacy subscription keeps RethinkDB in sync; dropping it is safe only when no
client reads RethinkDB any more. A client reads it at ``old`` (every client neither
flag lists) and at ``shadow``. The answer comes from the flag backend itself (the
Unleash Admin API or the flag file), not from an SDK cache, and any failure to read it
raises: a guard must fail closed.
"""

from __future__ import annotations

from cutover.runtime import Runtime

from .backend import FlagBackend, backend_for
from .stages import Stage


def clients_reading_old_store(
    runtime: Runtime, entity_name: str, backend: FlagBackend | None = None
) -> list[str]:
    """Sorted ids of every known client of the entity whose stage is old or shadow.

    Known clients: those either store holds (``SqlStore.clients`` and the keys of
    ``RethinkStore.count_per_client``) plus any a flag lists.
    """
    entity = runtime.cfg.entity(entity_name)
    owned = backend is None
    flags_backend = backend or backend_for(runtime.settings)
    try:
        flags = flags_backend.read(entity.name)
    finally:
        if owned:
            flags_backend.close()
    known = (
        set(runtime.sql.clients(entity))
        | set(runtime.rethink.count_per_client(entity))
        | flags.listed_clients()
    )
    return sorted(c for c in known if flags.stage_of(c) is not Stage.NEW)
