"""cutover's own bookkeeping tables, gathered from the areas that own them.

Each area declares its tables in ``<area>/tables.py`` as ``TABLES``; ``cutover db
init`` and every worker's start-up create or upgrade them with the entity tables.
"""

from __future__ import annotations

import importlib

from stores.sql import Table

AREAS = ("subscribers", "backfill", "flags")


def all_tables() -> list[Table]:
    tables: list[Table] = []
    for area in AREAS:
        try:
            module = importlib.import_module(f"{area}.tables")
        except ModuleNotFoundError as exc:
            if exc.name not in (area, f"{area}.tables"):
                raise
            continue
        tables.extend(module.TABLES)
    return tables
