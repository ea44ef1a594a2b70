"""Fixtures for the subscribers tests: one isolated "world" per test.

A world is a config file (the project's entities with a private RethinkDB database),
Settings pointing at the session's real servers (Pub/Sub, PostgreSQL through pyodbc,
reqlite) with a fresh PostgreSQL database and a unique Pub/Sub project, the Runtime
built from them, and the same settings as CUTOVER_* variables for a worker subprocess
or the CLI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from core.config import load_config
from core.settings import Settings
from cutover import services
from stores.runtime import Runtime
from subscribers import counters
from subscribers.worker import Worker

ROOT = Path(__file__).resolve().parents[2]

#: Worker-test subscriptions: the shortest ack deadline Pub/Sub allows (so a killed
#: worker's messages come back within seconds), small batches and outstanding limits.
TEST_SUBSCRIPTIONS = """
[subscriptions.orders-sqlstore]
topic = "orders"
entity = "orders"
sink = "sqlstore"
ack_deadline_s = 10
max_outstanding_messages = 1000
batch_size = 250
max_batch_latency_ms = 50

[subscriptions.orders-rethinkdb]
topic = "orders"
entity = "orders"
sink = "rethinkdb"
ack_deadline_s = 10
max_outstanding_messages = 1000
batch_size = 250
max_batch_latency_ms = 50
"""


def config_text(rethink_db: str, subscriptions: str | None) -> str:
    """cutover.toml with a private RethinkDB database; its own subscriptions or these."""
    text = (ROOT / "cutover.toml").read_text(encoding="utf-8")
    text = text.replace('rethinkdb_db = "app"', f'rethinkdb_db = "{rethink_db}"')
    if subscriptions is not None:
        text = text.split("\n[subscriptions.", 1)[0] + "\n" + subscriptions
    return text


@dataclass
class World:
    settings: Settings
    path: Path
    rethink_db: str
    tmp: Path
    runtimes: list[Runtime] = field(default_factory=list)

    @property
    def runtime(self) -> Runtime:
        if not self.runtimes:
            self.runtimes.append(Runtime(self.settings))
        return self.runtimes[0]

    def new_runtime(self) -> Runtime:
        """Another runtime (own connection pool), as a second worker process would have."""
        rt = Runtime(self.settings)
        self.runtimes.append(rt)
        return rt

    def reconfigure(self, subscriptions: str) -> Runtime:
        """Rewrite the config file's subscriptions; returns a runtime that reads it."""
        self.path.write_text(config_text(self.rethink_db, subscriptions), encoding="utf-8")
        rt = Runtime(self.settings, load_config(self.path))
        self.runtimes.append(rt)
        return rt

    @property
    def entity(self) -> Any:
        return self.runtime.cfg.entity("orders")

    def env(self) -> dict[str, str]:
        """The settings as CUTOVER_* variables (for a subprocess or the CLI)."""
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("CUTOVER_")}
        env.update(
            {
                "CUTOVER_CONFIG_FILE": str(self.path),
                "CUTOVER_STATE_DIR": str(s.state_dir),
                "CUTOVER_SQL_DSN": s.sql_dsn.get_secret_value() if s.sql_dsn else "",
                "CUTOVER_PUBSUB_EMULATOR_HOST": s.pubsub_emulator_host or "",
                "CUTOVER_PUBSUB_PROJECT": s.pubsub_project,
                "CUTOVER_RETHINKDB_HOST": s.rethinkdb_host,
                "CUTOVER_RETHINKDB_PORT": str(s.rethinkdb_port),
            }
        )
        return env

    def processed(self, name: str) -> int:
        """Messages committed so far on a subscription, over every worker (SQL counters)."""
        found = counters.read_all(self.runtime.sql).get(name)
        return found.processed if found else 0

    @contextmanager
    def worker(self, *names: str, runtime: Runtime | None = None) -> Iterator[Worker]:
        """An in-process worker, stopped (batch in hand committed and acked) on exit."""
        w = Worker(
            runtime or self.runtime, names, min_backoff_s=0.1, max_backoff_s=1.0, log_every_s=5
        )
        w.start()
        try:
            yield w
        finally:
            w.stop()

    def spawn(self, *names: str) -> subprocess.Popen[bytes]:
        """``cutover subs run NAMES`` as a separate process, settings from CUTOVER_*."""
        argv = [
            sys.executable,
            "-c",
            "from cutover.cli import main; main()",
            "subs",
            "run",
            *names,
            "--log-every",
            "2",
        ]
        with open(self.tmp / f"worker-{uuid.uuid4().hex[:6]}.log", "wb") as log:
            return subprocess.Popen(
                argv, env=self.env(), cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT
            )


def _make_world(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    rethink: services.ServiceInfo,
    pubsub_url: str,
    sql_dsn: str,
    subscriptions: str | None,
) -> World:
    db = f"t_{uuid.uuid4().hex[:10]}"
    path = tmp_path / "cutover.toml"
    path.write_text(config_text(db, subscriptions), encoding="utf-8")
    settings = make_settings(
        config_file=path,
        sql_dsn=sql_dsn,
        pubsub_emulator_host=pubsub_url,
        rethinkdb_host=rethink.host,
        rethinkdb_port=rethink.port,
    )
    return World(settings, path, db, tmp_path)


def _close(world: World) -> None:
    for rt in world.runtimes:
        rt.close()
    try:
        from stores.rethink import r

        with world.runtime.rethink.connection() as conn:
            if world.rethink_db in r.db_list().run(conn):
                r.db_drop(world.rethink_db).run(conn)
    except Exception:
        pass


@pytest.fixture
def world(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    pubsub_server: services.ServiceInfo,
    rethink_server: services.ServiceInfo,
    postgres_dsn: str,
) -> Iterator[World]:
    """Test-tuned subscriptions (short ack deadline, small batches)."""
    w = _make_world(
        tmp_path, make_settings, rethink_server, pubsub_server.url, postgres_dsn, TEST_SUBSCRIPTIONS
    )
    yield w
    _close(w)


@pytest.fixture
def sqlite_world(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    pubsub_server: services.ServiceInfo,
    rethink_server: services.ServiceInfo,
    sqlite_dsn: str,
) -> Iterator[World]:
    """:func:`world` with the SQLite stand-in (through pyodbc) as the SQL store."""
    w = _make_world(
        tmp_path, make_settings, rethink_server, pubsub_server.url, sqlite_dsn, TEST_SUBSCRIPTIONS
    )
    yield w
    _close(w)


@pytest.fixture
def declared_world(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    pubsub_server: services.ServiceInfo,
    rethink_server: services.ServiceInfo,
    postgres_dsn: str,
) -> Iterator[World]:
    """The project's own cutover.toml subscriptions, as an engineer would manage them."""
    w = _make_world(tmp_path, make_settings, rethink_server, pubsub_server.url, postgres_dsn, None)
    yield w
    _close(w)


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of this test alone, so stopping it breaks no other test."""

    state: Path
    info: services.ServiceInfo

    @property
    def dsn(self) -> str:
        return self.info.extra["odbc_dsn"]

    def stop(self) -> None:
        services.down(["postgres"], state_dir=self.state)

    def start(self) -> None:
        """Start again on the same port (the data directory survives ``down``)."""
        from cutover.services import _proc

        with mock.patch.object(_proc, "free_port", return_value=self.info.port):
            info = services.up(["postgres"], state_dir=self.state)["postgres"]
        assert info.port == self.info.port
        self.info = info


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    # Not pytest's tmp_path (0700 for root): PostgreSQL runs as its own user, which must
    # be able to enter its data folder.
    state = Path(tempfile.mkdtemp(prefix="cutover-test-private-pg-"))
    state.chmod(0o711)
    try:
        info = services.up(["postgres"], state_dir=state)["postgres"]
        yield PrivatePostgres(state, info)
    finally:
        services.down(state_dir=state)
        shutil.rmtree(state, ignore_errors=True)
