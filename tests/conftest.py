"""Fixtures per real server, started by the project itself (never a mock).

Each server starts once per test session, on a free loopback port with a private
data folder under pytest's temp dir, and only when a test asks for it; all are
stopped by PID at the end. Every test gets its own isolation unit: a fresh
PostgreSQL database, a fresh SQLite file, a fresh RethinkDB database name, fresh
Pub/Sub topic names.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyodbc
import pytest

from cutover import services
from cutover.config import Config, load_config
from cutover.settings import Settings
from stores.rethink import RethinkStore
from stores.sql import SqlStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state = tmp_path_factory.mktemp("services")
    yield state
    services.down(state_dir=state)


def _server(name: str, state: Path) -> services.ServiceInfo:
    return services.up([name], state_dir=state)[name]


@pytest.fixture(scope="session")
def pubsub_server(services_dir: Path) -> services.ServiceInfo:
    return _server("pubsub", services_dir)


@pytest.fixture(scope="session")
def rethink_server(services_dir: Path) -> services.ServiceInfo:
    return _server("rethinkdb", services_dir)


@pytest.fixture(scope="session")
def postgres_server(services_dir: Path) -> services.ServiceInfo:
    return _server("postgres", services_dir)


@pytest.fixture(scope="session")
def unleash_server(services_dir: Path) -> services.ServiceInfo:
    return _server("unleash", services_dir)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def config() -> Config:
    """The project's cutover.toml, with RethinkDB databases private to this test."""
    base = load_config(ROOT / "cutover.toml")
    db = unique("t")
    entities = {
        name: e.model_copy(update={"rethinkdb_db": db}) for name, e in base.entities.items()
    }
    return base.model_copy(update={"entities": entities})


@pytest.fixture
def postgres_dsn(postgres_server: services.ServiceInfo) -> str:
    """An ODBC DSN for a fresh database in the private PostgreSQL cluster."""
    admin_dsn = postgres_server.extra["odbc_dsn"]
    name = unique("t")
    conn = pyodbc.connect(admin_dsn, autocommit=True)
    conn.execute(f"CREATE DATABASE {name}")
    conn.close()
    return admin_dsn.replace("DATABASE=cutover", f"DATABASE={name}")


@pytest.fixture
def sqlite_dsn(tmp_path: Path) -> str:
    return f"DRIVER={{SQLite3}};Database={tmp_path / 'cutover.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_dsn(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(dialect, DSN) for each stand-in: tests using it run on both."""
    if request.param == "sqlite":
        return "sqlite", request.getfixturevalue("sqlite_dsn")
    return "postgresql", request.getfixturevalue("postgres_dsn")


@pytest.fixture
def sql_store(sql_dsn: tuple[str, str], config: Config) -> Iterator[SqlStore]:
    dialect, dsn = sql_dsn
    store = SqlStore(dsn, dialect, config)
    store.ensure_schema()
    yield store
    store.close()


@pytest.fixture
def pg_store(postgres_dsn: str, config: Config) -> Iterator[SqlStore]:
    store = SqlStore(postgres_dsn, "postgresql", config)
    store.ensure_schema()
    yield store
    store.close()


@pytest.fixture
def rethink_store(rethink_server: services.ServiceInfo, config: Config) -> RethinkStore:
    store = RethinkStore(config, host=rethink_server.host, port=rethink_server.port)
    store.ensure_tables()
    return store


@pytest.fixture
def make_settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Build Settings for a test: no env files, a private state dir, explicit servers."""

    def build(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "config_file": ROOT / "cutover.toml",
            "state_dir": tmp_path / "state",
            "pubsub_project": unique("p"),
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return build


@pytest.fixture(autouse=True)
def _no_ambient_cutover_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up a developer's CUTOVER_* variables or servers by accident."""
    for key in list(os.environ):
        if key.startswith("CUTOVER_") and key != "CUTOVER_TEST_MSSQL_DSN":
            monkeypatch.delenv(key)
