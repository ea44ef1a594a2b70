"""Poison messages: logged with everything needed, acked, never blocking the stream;
inspected and replayed through the CLI, replays obeying the version rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from subs_support import publish, publish_raw, wait_until

from core.events import Event
from cutover.cli import cli
from cutover.synthetic import generate_history
from subscribers import audit, failures, manage


def _event(id_: str, version: int, **data: object) -> Event:
    base = {
        "status": "paid",
        "amount": 1.5,
        "quantity": 2,
        "paid": True,
        "placed_at": "2024-03-01T10:00:00Z",
        "meta": {"k": 1},
    }
    return Event(
        event_id=f"{id_[:50]}-v{version}",
        entity="orders",
        op="upsert",
        id=id_,
        client_id="client-009",
        version=version,
        occurred_at=datetime(2024, 3, 1, tzinfo=UTC),
        data={**base, **data},
    )


@pytest.fixture
def cli_env(world, monkeypatch, tmp_path):
    """The CLI sees the world's settings through CUTOVER_* and no project .env file."""
    for key, value in world.env().items():
        if key.startswith("CUTOVER_"):
            monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def test_one_poison_in_a_thousand_then_replay_after_fix(world, cli_env, tmp_path) -> None:
    """999 good events are applied; the poison (quantity sent as the string "7") goes
    to the failure log with its raw body and attributes and is acked; a replay of the
    unchanged body fails again (attempts grow, the row stays absent); a replay with the
    corrected body applies it and closes the entry."""
    rt = world.runtime
    manage.add(rt, "orders-sqlstore")
    good = generate_history(
        world.entity, clients=3, ids_per_client=333, versions=1, delete_rate=0.0, seed=5
    )
    assert len(good) == 999
    poison = _event("client-009-poison", 1, quantity="7")
    publish(world.settings, good[:500])
    poison_id = publish_raw(world.settings, poison.to_json_bytes(), **poison.attributes)
    publish(world.settings, good[500:])

    with world.worker("orders-sqlstore") as worker:
        wait_until(lambda: world.processed("orders-sqlstore") >= 1000, 60, "1,000 processed")
        assert worker.totals("orders-sqlstore")["failed"] == 1
    assert rt.sql.count(world.entity, include_deleted=True) == 999
    assert rt.sql.get(world.entity, poison.id) is None

    [entry] = failures.list_failures(rt.sql, subscription="orders-sqlstore")
    assert entry.message_id == poison_id
    assert entry.data == poison.to_json_bytes()
    assert entry.attributes == poison.attributes
    assert "quantity" in entry.error and "integer" in entry.error
    assert entry.attempts >= 1 and entry.first_seen <= entry.last_seen
    assert entry.status == "open"

    listed = cli_env.invoke(cli, ["subs", "failures", "list"])
    assert listed.exit_code == 0, listed.output
    assert poison_id in listed.output
    shown = cli_env.invoke(cli, ["subs", "failures", "show", poison_id])
    assert shown.exit_code == 0, shown.output
    assert '"quantity":"7"' in shown.output

    again = cli_env.invoke(cli, ["subs", "failures", "replay", poison_id])
    assert again.exit_code == 0, again.output
    assert "failed" in again.output
    still = failures.get(rt.sql, poison_id)
    assert still.status == "open" and still.attempts == entry.attempts + 1
    assert rt.sql.get(world.entity, poison.id) is None

    fixed = tmp_path / "fixed.json"
    fixed.write_bytes(_event("client-009-poison", 1, quantity=7).to_json_bytes())
    result = cli_env.invoke(
        cli, ["subs", "failures", "replay", poison_id, "--data", str(fixed), "--actor", "alice"]
    )
    assert result.exit_code == 0, result.output
    assert "applied" in result.output
    row = rt.sql.get(world.entity, poison.id)
    assert row is not None and row.values["quantity"] == 7 and row.version == 1
    closed = failures.get(rt.sql, poison_id)
    assert closed.status == "replayed" and closed.resolution == "applied (corrected body)"
    assert failures.list_failures(rt.sql) == []  # no open entry left
    [replayed] = [
        e
        for e in audit.read(rt.sql, "orders-sqlstore")
        if e.action == "replay" and e.details["result"] == "applied"
    ]
    assert replayed.actor == "alice" and replayed.details["message_id"] == poison_id


def test_every_kind_of_poison_and_a_stale_replay(world) -> None:
    """Each kind of bad message is logged with a reason and acked while the good event
    next to it is applied. Replaying a fixed poison older than the stored row is
    "stale": the newer row is kept, as the version rules say."""
    rt = world.runtime
    manage.add(rt, "orders-sqlstore")
    other = Event(
        event_id="c1",
        entity="customers",
        op="upsert",
        id="x",
        client_id="c",
        version=1,
        occurred_at=datetime(2024, 1, 1, tzinfo=UTC),
        data={},
    )
    unknown = json.loads(_event("u", 1).to_json_bytes()) | {"entity": "invoices"}
    no_version = json.loads(_event("n", 1).to_json_bytes())
    del no_version["version"]
    bodies = {
        b"not json at all": "not JSON",
        b"\xff\xfe\x00binary": "not UTF-8",
        b"[1, 2, 3]": "JSON object",
        json.dumps(no_version).encode(): "version",
        json.dumps(unknown).encode(): "unknown entity",
        other.to_json_bytes(): "not 'orders'",
        # A key longer than the SQL key column: refused for both sinks alike (a value
        # the SQL server itself refuses is in test_subs_containment.py).
        _event("k" * 300, 1).to_json_bytes(): "longer than 255",
    }
    ids = {publish_raw(world.settings, body): reason for body, reason in bodies.items()}
    publish(world.settings, [_event("client-009-a", 2, quantity=20)])
    old_poison = _event("client-009-a", 1, quantity="1")
    old_id = publish_raw(world.settings, old_poison.to_json_bytes(), **old_poison.attributes)

    with world.worker("orders-sqlstore"):
        wait_until(
            lambda: world.processed("orders-sqlstore") >= len(ids) + 2, 60, "every message handled"
        )
    logged = {f.message_id: f for f in failures.list_failures(rt.sql)}
    assert set(logged) == {*ids, old_id}
    for message_id, reason in ids.items():
        assert reason in logged[message_id].error, logged[message_id].error
    assert logged[next(i for i, r in ids.items() if r == "not UTF-8")].data == b"\xff\xfe\x00binary"
    row = rt.sql.get(world.entity, "client-009-a")
    assert row is not None and row.version == 2

    outcome = failures.replay(
        rt, logged[old_id], data=_event("client-009-a", 1, quantity=1).to_json_bytes()
    )
    assert outcome.result == "stale"
    row = rt.sql.get(world.entity, "client-009-a")
    assert row is not None and row.version == 2 and row.values["quantity"] == 20
    assert failures.get(rt.sql, old_id).status == "replayed"
