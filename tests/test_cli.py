"""The root CLI: events, db and settings subcommands, through click's runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from core import pubsub
from core.events import parse_event
from core.settings import Settings
from cutover.cli import cli
from cutover.services import ServiceInfo

ROOT = Path(__file__).resolve().parent.parent
GOOD = {
    "event_id": "e-1",
    "entity": "orders",
    "op": "upsert",
    "id": "o-1",
    "client_id": "acme",
    "version": 1,
    "occurred_at": "2024-05-01T10:00:00Z",
    "data": {"status": "paid"},
}


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Invoke `cutover ...` from an empty folder (no stray .env or services.env)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CUTOVER_CONFIG_FILE", str(ROOT / "cutover.toml"))
    monkeypatch.setenv("CUTOVER_STATE_DIR", str(tmp_path / "state"))

    def invoke(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli, list(args))
        return result.exit_code, result.output

    return invoke


def test_events_schema_is_json_schema(run) -> None:  # type: ignore[no-untyped-def]
    code, out = run("events", "schema")
    assert code == 0
    assert json.loads(out)["properties"]["op"]["enum"] == ["upsert", "delete"]


def test_publish_refuses_a_file_with_a_bad_line_and_publishes_nothing(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """One malformed line stops the command before anything is sent: nothing is lost
    half-way, and the message names the file and the line."""
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "version": "2"}) + "\n")
    code, out = run("events", "publish", "--file", str(path), "--dry-run")
    assert code == 2
    assert f"{path}:2:" in out and "version" in out


def test_publish_refuses_an_unknown_entity(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps({**GOOD, "entity": "invoices"}) + "\n")
    code, out = run("events", "publish", "--file", str(path))
    assert code == 2 and "unknown entity 'invoices'" in out


def test_publish_a_file_then_read_it_back(
    run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pubsub_server: ServiceInfo,  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setenv("CUTOVER_PUBSUB_EMULATOR_HOST", pubsub_server.url)
    monkeypatch.setenv("CUTOVER_PUBSUB_PROJECT", "cli-test")
    settings = Settings(
        _env_file=None, pubsub_emulator_host=pubsub_server.url, pubsub_project="cli-test"
    )
    pubsub.ensure_topic(settings, "orders")
    sub = pubsub.subscriber(settings)
    path = pubsub.subscription_path(settings, "cli-read")
    sub.create_subscription(name=path, topic=pubsub.topic_path(settings, "orders"))
    events = [{**GOOD, "event_id": f"e-{v}", "version": v} for v in (1, 2, 3)]
    (tmp_path / "events.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n")
    code, out = run("events", "publish", "--file", str(tmp_path / "events.jsonl"))
    assert code == 0, out
    assert "published 3 events to orders" in out
    got = []
    for _ in range(20):
        response = sub.pull(subscription=path, max_messages=10, timeout=5)
        for m in response.received_messages:
            got.append(m)
        if len(got) >= 3:
            break
    assert sorted(parse_event(m.message.data).version for m in got) == [1, 2, 3]
    assert {m.message.ordering_key for m in got} == {"orders:o-1"}
    assert got[0].message.attributes["client_id"] == "acme"
    sub.close()


def test_ddl_prints_tsql_for_review(run) -> None:  # type: ignore[no-untyped-def]
    code, out = run("db", "ddl", "--dialect", "mssql")
    assert code == 0
    assert "CREATE TABLE [orders]" in out and "COLLATE Latin1_General_100_BIN2" in out


def test_settings_never_print_secrets(run, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(
        "CUTOVER_SQL_DSN", "DRIVER={ODBC Driver 18 for SQL Server};SERVER=db;UID=u;PWD=hunter2"
    )
    monkeypatch.setenv("CUTOVER_ADMIN_TOKEN", "s3cret-token")
    code, out = run("settings")
    assert code == 0
    assert "mssql" in out
    assert "hunter2" not in out and "s3cret-token" not in out


def test_a_bad_config_file_is_a_clear_error(
    run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.toml"
    bad.write_text('[entities.orders]\nrethinkdb_db = "app"\n')
    monkeypatch.setenv("CUTOVER_CONFIG_FILE", str(bad))
    code, out = run("settings")
    assert code == 2
    assert out.startswith(f"error: {bad}: invalid configuration")
