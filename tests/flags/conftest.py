"""Fixtures for the flags area: private entity names, both flag backends, seeded stores.

Every test gets entity names of its own (``orders`` becomes ``orders_<hex>``), so its
flags ``cutover.orders_<hex>.shadow|new`` are private even on the session's shared
Unleash server (the open-source server has a single project and environment).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cutover import services
from cutover.config import Config
from cutover.runtime import Runtime
from cutover.settings import Settings
from cutover.synthetic import generate_history, reference
from stores.mapping import Row


@pytest.fixture
def flag_config(config: Config) -> Config:
    """The test's config with entity names unique to this test (and no subscriptions)."""
    tag = uuid.uuid4().hex[:8]
    entities = {
        f"{name}_{tag}": e.model_copy(update={"name": f"{name}_{tag}"})
        for name, e in config.entities.items()
    }
    return config.model_copy(update={"entities": entities, "subscriptions": {}})


@pytest.fixture
def orders(flag_config: Config) -> str:
    """This test's name for the ``orders`` entity."""
    return next(n for n in flag_config.entities if n.startswith("orders_"))


@pytest.fixture
def unleash_settings(
    make_settings: Callable[..., Settings],
    unleash_server: services.ServiceInfo,
    rethink_server: services.ServiceInfo,
) -> Settings:
    return make_settings(
        unleash_url=unleash_server.url,
        unleash_admin_token=unleash_server.extra["admin_token"],
        unleash_backend_token=unleash_server.extra["backend_token"],
        rethinkdb_host=rethink_server.host,
        rethinkdb_port=rethink_server.port,
    )


@pytest.fixture
def file_settings(
    make_settings: Callable[..., Settings],
    rethink_server: services.ServiceInfo,
    tmp_path: Path,
) -> Settings:
    """No Unleash URL: the embedded flag file, SQLite store, a state dir of its own."""
    return make_settings(
        state_dir=tmp_path / "file-state",
        rethinkdb_host=rethink_server.host,
        rethinkdb_port=rethink_server.port,
    )


def make_runtime(settings: Settings, cfg: Config) -> Runtime:
    rt = Runtime(settings, cfg)
    rt.sql.ensure_schema()
    rt.rethink.ensure_tables()
    return rt


def seed(rt: Runtime, entity: str, *, clients: int = 3, ids: int = 6, seed: int = 7) -> list[Row]:
    """The same synthetic history in both stores (they agree); returns the rows."""
    ent = rt.cfg.entity(entity)
    history = generate_history(ent, clients=clients, ids_per_client=ids, seed=seed)
    rows = list(reference(ent, history).values())
    rt.sql.apply(ent, rows)
    rt.rethink.write(ent, rows)
    return rows


@pytest.fixture
def seed_both() -> Callable[..., list[Row]]:
    return seed


@pytest.fixture
def file_runtime(file_settings: Settings, flag_config: Config) -> Iterator[Runtime]:
    rt = make_runtime(file_settings, flag_config)
    yield rt
    rt.close()


@pytest.fixture
def unleash_runtime(unleash_settings: Settings, flag_config: Config) -> Iterator[Runtime]:
    rt = make_runtime(unleash_settings, flag_config)
    yield rt
    rt.close()
