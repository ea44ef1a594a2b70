"""Helpers shared by several test folders (tests/ is on sys.path via its conftest)."""

from __future__ import annotations

from cutover.config import Config
from cutover.runtime import Runtime
from cutover.settings import Settings
from cutover.synthetic import generate_history, reference
from stores.mapping import Row


def make_runtime(settings: Settings, cfg: Config) -> Runtime:
    """A runtime whose SQL tables and RethinkDB tables exist."""
    rt = Runtime(settings, cfg)
    rt.sql.ensure_schema()
    rt.rethink.ensure_tables()
    return rt


def seed_stores(
    rt: Runtime, entity: str, *, clients: int, ids: int, seed: int, delete_rate: float = 0.1
) -> list[Row]:
    """The same synthetic history in both stores (they agree), tombstones included."""
    ent = rt.cfg.entity(entity)
    history = generate_history(
        ent, clients=clients, ids_per_client=ids, seed=seed, delete_rate=delete_rate
    )
    rows = list(reference(ent, history).values())
    rt.sql.apply(ent, rows)
    rt.rethink.write(ent, rows)
    return rows
