"""Fixtures for the backfill and verification tests: histories, old stores, helpers.

Old documents come from the project's synthetic history (``cutover.synthetic``) and are
put either in the live RethinkDB stand-in (reqlite) or in an export folder written the
way ``rethinkdb export`` writes one. The SQL side is the root ``sql_store`` (SQLite and
PostgreSQL) or ``pg_store``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from backfill.sources import ExportSource, RethinkSource, write_export
from core.config import Config, Entity
from stores.rethink import RethinkStore


@pytest.fixture
def orders(config: Config) -> Entity:
    return config.entity("orders")


@pytest.fixture
def export_of(tmp_path: Path) -> Callable[[Entity, list[dict[str, Any]]], ExportSource]:
    counter = iter(range(1000))

    def make(entity: Entity, docs: list[dict[str, Any]]) -> ExportSource:
        folder = tmp_path / f"export-{next(counter)}"
        write_export(folder, entity, docs)
        return ExportSource(folder)

    return make


@pytest.fixture
def live_of(rethink_store: RethinkStore) -> Callable[[Entity, list[dict[str, Any]]], RethinkSource]:
    def make(entity: Entity, docs: list[dict[str, Any]]) -> RethinkSource:
        for start in range(0, len(docs), 500):
            rethink_store.insert_documents(entity, docs[start : start + 500])
        return RethinkSource(rethink_store, page_size=200)

    return make
