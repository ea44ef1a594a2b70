"""cutover's own bookkeeping tables, gathered from the areas that own them.

Each area declares its tables in ``<area>/tables.py`` as ``TABLES``; ``cutover db
init`` and every worker's start-up create or upgrade them with the entity tables.
The areas are imported explicitly: a table module that fails to import is an error,
never a silently missing table.
"""

from __future__ import annotations

from stores.sql import Table


def all_tables() -> list[Table]:
    from backfill.tables import TABLES as backfill_tables
    from flags.tables import TABLES as flags_tables
    from subscribers.tables import TABLES as subscribers_tables

    return [*subscribers_tables, *backfill_tables, *flags_tables]
