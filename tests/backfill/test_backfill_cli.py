"""The commands: run/pause/resume/status/verify, and a SIGKILL in the middle of a run.

Commands are invoked the way an operator runs them, with settings from CUTOVER_*
variables; the crash test runs the backfill as a separate process and kills it with
SIGKILL, then resumes it with the same command.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from backfill_helpers import alive, assert_state, child_pids, docs_for, history_state
from click.testing import CliRunner

from backfill import ledger
from backfill.cli import standalone
from backfill.partitions import partitions_of, run_id_for
from backfill.sources import ExportSource, write_export
from core.config import Entity, load_config
from stores.mapping import Row
from stores.sql import SqlStore

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def app_orders() -> Entity:
    """The entity as cutover.toml declares it (what a separate process loads)."""
    return load_config(ROOT / "cutover.toml").entity("orders")


@pytest.fixture
def env(postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {
        "CUTOVER_SQL_DSN": postgres_dsn,
        "CUTOVER_CONFIG_FILE": str(ROOT / "cutover.toml"),
        "CUTOVER_STATE_DIR": str(tmp_path / "state"),
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # no .cutover/services.env or .env picked up
    return values


@pytest.fixture
def store(postgres_dsn: str) -> SqlStore:
    sql = SqlStore(postgres_dsn, "postgresql", load_config(ROOT / "cutover.toml"))
    ledger.ensure_tables(sql)
    return sql


def _cli(*args: str) -> Any:
    return CliRunner().invoke(standalone, list(args), catch_exceptions=False)


def test_run_status_pause_resume_verify(
    env: dict[str, str], store: SqlStore, app_orders: Entity, tmp_path: Path
) -> None:
    state = history_state(app_orders, clients=2, ids=30, seed=41)
    folder = tmp_path / "export"
    write_export(folder, app_orders, docs_for(app_orders, state.values()))
    done = _cli(
        "backfill", "run", "orders", "--from-export", str(folder), "--rate", "0", "--reader-process"
    )
    assert done.exit_code == 0, done.output
    assert "backfill orders: complete" in done.output
    assert_state(store, app_orders, state)

    assert "not paused" in _cli("backfill", "status", "orders").output
    assert _cli("backfill", "pause", "orders", "--reason", "peak hours").exit_code == 0
    assert "PAUSED" in _cli("backfill", "status", "orders").output
    assert _cli("backfill", "resume", "orders").exit_code == 0
    data = json.loads(_cli("backfill", "status", "orders", "--json").output)
    assert data["paused"] is False and data["runs"][0]["status"] == "done"
    assert {e["client"]: e["state"] for e in data["ledger"]} == {
        "client-000": "copied",
        "client-001": "copied",
    }

    report = tmp_path / "verify.json"
    clean = _cli("verify", "orders", "--from-export", str(folder), "--report", str(report))
    assert clean.exit_code == 0, clean.output
    assert "CLEAN" in clean.output and json.loads(report.read_text())["clean"] is True
    assert ledger.client_status(store, "orders", "client-000").state == "verified"  # type: ignore[union-attr]

    # 25 keys removed from SQL: exit code 1, and every one of them is listed.
    victims = sorted(k for k, r in state.items() if not r.deleted)[:25]
    with store.transaction() as cur:
        q = store.dialect.quote
        for key in victims:
            cur.execute(f"DELETE FROM {q('orders')} WHERE {q('id')} = ?", key)
    dirty = _cli(
        "verify",
        "orders",
        "--from-export",
        str(folder),
        "--report",
        str(report),
        "--recheck-delay",
        "0",
    )
    assert dirty.exit_code == 1
    assert all(f"  {key}  missing_in_new" in dirty.output for key in victims)
    listed = json.loads(report.read_text())["differences"]
    assert sorted(d["key"] for d in listed) == victims
    assert ledger.client_status(store, "orders", "client-000").state == "copied"  # type: ignore[union-attr]


def test_bad_documents_make_run_exit_1_and_unknown_entity_exit_2(
    env: dict[str, str], store: SqlStore, app_orders: Entity, tmp_path: Path
) -> None:
    folder = tmp_path / "export"
    write_export(
        folder,
        app_orders,
        [
            {"id": "a", "client_id": "c", "version": 1},
            {"id": "b", "client_id": "c", "version": "one"},
        ],
    )
    result = _cli("backfill", "run", "orders", "--from-export", str(folder), "--rate", "0")
    assert result.exit_code == 1 and "key:b" in result.output
    unknown = _cli("backfill", "run", "invoices", "--from-export", str(folder))
    assert unknown.exit_code == 2 and "unknown entity 'invoices'" in unknown.output
    missing = _cli("backfill", "run", "customers", "--from-export", str(folder))
    assert missing.exit_code == 2 and "no export file for customers" in missing.output
    assert "--sample" in _cli("verify", "--help").output


def test_sigkill_mid_run_then_the_same_command_resumes(
    env: dict[str, str], store: SqlStore, app_orders: Entity, tmp_path: Path
) -> None:
    """SIGKILL leaves rows and checkpoint consistent (one transaction); the resumed run
    reads only what was not committed: at most the one batch in flight is read again.
    The killed run's reader process notices and exits: nothing is left running."""
    state = history_state(app_orders, clients=3, ids=300, seed=43, delete_rate=0.1)
    n = len(state)
    folder = tmp_path / "export"
    write_export(folder, app_orders, docs_for(app_orders, state.values()))
    run_id = run_id_for("orders", ExportSource(folder).identity(app_orders), None)
    command = [
        sys.executable,
        "-m",
        "backfill.cli",
        "backfill",
        "run",
        "orders",
        "--from-export",
        str(folder),
        "--batch",
        "20",
    ]
    child_env = {**{k: v for k, v in os.environ.items() if not k.startswith("CUTOVER_")}, **env}
    proc = subprocess.Popen(
        [*command, "--rate", "400", "--reader-process"],
        env=child_env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    def read_so_far() -> int:
        return sum(p.rows_read for p in partitions_of(store, run_id))

    deadline = time.monotonic() + 60
    while read_so_far() < 200:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline
        time.sleep(0.02)
    readers = child_pids(proc.pid, b"backfill._reader")
    assert readers
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in readers):
        assert time.monotonic() < deadline, "the reader process outlived its backfill"
        time.sleep(0.05)
    checkpoint = read_so_far()
    assert 200 <= checkpoint < n
    assert store.count(app_orders, include_deleted=True) == checkpoint  # rows == checkpoint

    resumed = subprocess.run(
        [*command, "--rate", "0"],
        env=child_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"this session: {n - checkpoint:,} documents" in resumed.stdout
    parts = partitions_of(store, run_id)
    assert sum(p.rows_read for p in parts) == n and sum(p.rows_applied for p in parts) == n
    assert_state(store, app_orders, state)


def test_live_run_with_an_activity_list_copies_listed_clients_first(
    env: dict[str, str],
    postgres_dsn: str,
    rethink_server: Any,
    rethink_store: Any,
    orders: Entity,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--active-first FILE`: listed clients first (in list order), then by size."""
    toml = (
        (ROOT / "cutover.toml")
        .read_text()
        .replace('rethinkdb_db = "app"', f'rethinkdb_db = "{orders.rethinkdb_db}"')
    )
    (tmp_path / "cutover.toml").write_text(toml)
    monkeypatch.setenv("CUTOVER_CONFIG_FILE", str(tmp_path / "cutover.toml"))
    monkeypatch.setenv("CUTOVER_RETHINKDB_HOST", rethink_server.host)
    monkeypatch.setenv("CUTOVER_RETHINKDB_PORT", str(rethink_server.port))
    state = history_state(orders, clients=4, ids=10, seed=3)
    extra = [Row(f"client-001-x{i}", "client-001", 1, False, {}) for i in range(20)]
    rethink_store.insert_documents(orders, docs_for(orders, [*state.values(), *extra]))
    (tmp_path / "busy.txt").write_text("# busiest first\nclient-003\nclient-000\n")
    result = _cli(
        "backfill", "run", "orders", "--active-first", str(tmp_path / "busy.txt"), "--rate", "0"
    )
    assert result.exit_code == 0, result.output
    sql = SqlStore(postgres_dsn, "postgresql", load_config(tmp_path / "cutover.toml"))
    (run,) = json.loads(_cli("backfill", "status", "orders", "--json").output)["runs"]
    parts = partitions_of(sql, run["run_id"])
    assert [p.client for p in parts] == ["client-003", "client-000", "client-001", "client-002"]
    assert_state(sql, orders, {**state, **{r.key: r for r in extra}})
    assert all(e.state == "copied" for e in ledger.entries(sql, "orders"))
