"""Fixtures for the flags area: private entity names, both flag backends, seeded stores.

Every test gets entity names of its own (``orders`` becomes ``orders_<hex>``), so its
flags ``cutover.orders_<hex>.shadow|new`` are private even on the session's shared
Unleash server (the open-source server has a single project and environment).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import make_runtime, seed_stores

from core.config import Config
from core.settings import Settings
from cutover import services
from stores.mapping import Row
from stores.runtime import Runtime


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


def seed(rt: Runtime, entity: str, *, clients: int = 3, ids: int = 6, seed: int = 7) -> list[Row]:
    """The same synthetic history in both stores (they agree); returns the rows."""
    return seed_stores(rt, entity, clients=clients, ids=ids, seed=seed)


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
