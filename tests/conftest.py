"""Fixtures per real server, started by the project itself (never a mock).

Each server starts once per test session, on a free loopback port with a private
data folder under pytest's temp dir, and only when a test asks for it; all are
stopped by PID at the end. Every test gets its own isolation unit: a fresh
PostgreSQL database, a fresh SQLite file, a fresh RethinkDB database name, fresh
Pub/Sub topic names.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyodbc
import pytest

from core.config import Config, load_config
from core.settings import Settings
from cutover import services
from cutover.services.postgres import create_database
from stores.rethink import RethinkStore
from stores.sql import SqlStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def services_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: that is private to root (0700), and PostgreSQL runs as
    # its own user, which must be able to enter its data folder.
    state = Path(tempfile.mkdtemp(prefix="cutover-test-services-"))
    state.chmod(0o711)
    try:
        yield state
    finally:
        services.down(state_dir=state)
        shutil.rmtree(state, ignore_errors=True)


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
def flag_config(config: Config) -> Config:
    """Entity names unique to this test: its flags are private on a shared Unleash."""
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
def postgres_dsn(postgres_server: services.ServiceInfo) -> str:
    """An ODBC DSN for a fresh database in the private PostgreSQL cluster."""
    return create_database(postgres_server.extra["odbc_dsn"], unique("t"))


@pytest.fixture
def sqlite_dsn(tmp_path: Path) -> str:
    return f"DRIVER={{SQLite3}};Database={tmp_path / 'cutover.db'}"


MSSQL_DSN_VAR = "CUTOVER_TEST_MSSQL_DSN"


@pytest.fixture
def mssql_dsn(config: Config) -> str:
    """A real SQL Server, only when a DSN for one is given; its tables are dropped first.

    Point CUTOVER_TEST_MSSQL_DSN at a dedicated, disposable database.
    """
    dsn = os.environ.get(MSSQL_DSN_VAR)
    if not dsn:
        pytest.skip(f"{MSSQL_DSN_VAR} is not set: the T-SQL runs only against a real SQL Server")
    conn = pyodbc.connect(dsn, autocommit=True)
    for table in [e.sql_table for e in config.entities.values()] + ["cutover_schema"]:
        conn.execute(f"DROP TABLE IF EXISTS [{table}]")
    conn.close()
    return dsn


@pytest.fixture(params=["sqlite", "postgresql", "mssql"])
def sql_dsn(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(dialect, DSN): tests using it run on both stand-ins, and on SQL Server when given."""
    return request.param, request.getfixturevalue(
        f"{request.param.replace('postgresql', 'postgres')}_dsn"
    )


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
