"""Fixtures for the per-client jobs tests: one isolated world per test (see jobs_support)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from jobs_support import JobsWorld, config_text

from core.settings import Settings
from cutover import services
from cutover.tables import all_tables


@pytest.fixture
def jobs_world(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    pubsub_server: services.ServiceInfo,
    rethink_server: services.ServiceInfo,
    postgres_dsn: str,
) -> Iterator[JobsWorld]:
    from subscribers.manage import add

    db = f"t_{uuid.uuid4().hex[:10]}"
    path = tmp_path / "cutover.toml"
    path.write_text(config_text(db), encoding="utf-8")
    settings = make_settings(
        config_file=path,
        sql_dsn=postgres_dsn,
        pubsub_emulator_host=pubsub_server.url,
        rethinkdb_host=rethink_server.host,
        rethinkdb_port=rethink_server.port,
    )
    world = JobsWorld(settings, path, db, tmp_path)
    rt = world.runtime
    rt.sql.ensure_schema(all_tables())
    declared = rt.cfg.jobs_or_error().as_subscription()
    add(rt, declared.name, declared=declared)
    yield world
    for runtime in world.runtimes:
        runtime.close()
    try:
        from stores.rethink import r

        with rt.rethink.connection() as conn:
            if db in r.db_list().run(conn):
                r.db_drop(db).run(conn)
    except Exception:
        pass
