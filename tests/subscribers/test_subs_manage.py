"""add / sync / drop / list against the real Pub/Sub server, the audit log and the
legacy-drop guard, using the project's own cutover.toml declarations."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from core import pubsub
from cutover.cli import cli
from cutover.synthetic import generate_history
from stores.mapping import row_from_event
from subscribers import audit, manage

LOCAL_SERVER_DROPS = {
    "dead_letter_topic",
    "max_delivery_attempts",
    "retry_min_backoff_s",
    "retry_max_backoff_s",
}


def _server_subscriptions(world) -> dict:
    client = pubsub.subscriber(world.settings)
    try:
        return manage._existing(world.settings, client)
    finally:
        client.close()


@pytest.fixture
def cli_runner(declared_world, monkeypatch, tmp_path):
    for key, value in declared_world.env().items():
        if key.startswith("CUTOVER_"):
            monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def test_add_creates_topics_and_subscription_as_declared(declared_world) -> None:
    """add creates the topic, the dead-letter topic and the subscription with the
    declared settings, is idempotent, and is audited with the actor."""
    rt = declared_world.runtime
    change = manage.add(rt, "orders-sqlstore", actor="alice")
    assert "created topic orders" in change.done
    assert "created topic orders-dead-letter" in change.done
    actual = _server_subscriptions(declared_world)["orders-sqlstore"]
    assert actual.topic.endswith("/topics/orders")
    assert actual.ack_deadline_seconds == 60
    assert actual.enable_message_ordering is True
    # Only settings this server drops may remain different, and add says so.
    assert {
        d.field for d in manage.drift(rt.settings, rt.cfg.subscription("orders-sqlstore"), actual)
    } <= LOCAL_SERVER_DROPS

    assert manage.add(rt, "orders-sqlstore").done[0].startswith("already exists")
    [entry] = audit.read(rt.sql, "orders-sqlstore")
    assert (entry.action, entry.actor) == ("add", "alice")
    assert entry.details["declared"]["ack_deadline_s"] == 60


def test_drift_is_listed_and_sync_fixes_what_can_change(declared_world, cli_runner) -> None:
    """Changing the declaration shows drift in `subs list`; `sync` updates the ack
    deadline in place and reports message ordering as immutable (needs drop + add)."""
    rt = declared_world.runtime
    manage.add(rt, "customers-sqlstore")
    changed = """
[subscriptions.customers-sqlstore]
topic = "customers"
entity = "customers"
sink = "sqlstore"
ack_deadline_s = 30
message_ordering = false
"""
    rt2 = declared_world.reconfigure(changed)
    listed = cli_runner.invoke(cli, ["subs", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    [row] = [r for r in json.loads(listed.output) if r["name"] == "customers-sqlstore"]
    assert row["exists"] is True and row["sink"] == "sqlstore"
    assert any(d.startswith("ack_deadline_s: declared 30, server 60") for d in row["drift"])
    assert any(d.startswith("message_ordering: declared False") for d in row["drift"])

    dry = manage.sync(rt2, ["customers-sqlstore"], dry_run=True)[0]
    assert any("would set ack_deadline_s" in line for line in dry.done)
    assert _server_subscriptions(declared_world)["customers-sqlstore"].ack_deadline_seconds == 60

    result = cli_runner.invoke(cli, ["subs", "sync", "customers-sqlstore", "--actor", "bob"])
    assert result.exit_code == 0, result.output
    assert "set ack_deadline_s to 30" in result.output
    assert "immutable" in result.output
    actual = _server_subscriptions(declared_world)["customers-sqlstore"]
    assert actual.ack_deadline_seconds == 30
    left = {
        d.field
        for d in manage.drift(rt2.settings, rt2.cfg.subscription("customers-sqlstore"), actual)
    }
    assert "ack_deadline_s" not in left and "message_ordering" in left
    entry = next(e for e in audit.read(rt2.sql, "customers-sqlstore") if e.action == "sync")
    assert entry.actor == "bob"
    assert any("ack_deadline_s" in d for d in entry.details["drift_before"])


def test_list_shows_missing_and_undeclared_subscriptions(declared_world, cli_runner) -> None:
    """A declared subscription not on the server shows exists=false; one on the server
    the config does not declare is listed as undeclared."""
    s = declared_world.settings
    pubsub.ensure_topic(s, "orders")
    client = pubsub.subscriber(s)
    client.create_subscription(
        request={
            "name": pubsub.subscription_path(s, "stray-sub"),
            "topic": pubsub.topic_path(s, "orders"),
        }
    )
    client.close()
    result = cli_runner.invoke(cli, ["subs", "list"])
    assert result.exit_code == 0, result.output
    lines = {line.split("\t")[0]: line.split("\t") for line in result.output.splitlines()}
    assert lines["orders-sqlstore"][1] == "NO"
    assert lines["stray-sub"][1] == "yes (undeclared)"


def test_drop_asks_and_legacy_guard_refuses_while_clients_read_old_store(
    declared_world, cli_runner
) -> None:
    """The legacy (rethinkdb-sink) subscription is not dropped while clients read the
    old store: no flag has moved any client, so every known client still does. The
    refusal is audited; --force drops it; a new-store subscription drops freely."""
    rt = declared_world.runtime
    entity = rt.cfg.entity("orders")
    rt.sql.ensure_schema()
    history = generate_history(entity, clients=2, ids_per_client=2, versions=1, seed=1)
    rt.sql.apply(entity, [row_from_event(entity, e) for e in history])
    for name in ("orders-rethinkdb", "orders-sqlstore"):
        manage.add(rt, name)

    aborted = cli_runner.invoke(cli, ["subs", "drop", "orders-sqlstore"], input="n\n")
    assert aborted.exit_code == 1
    assert "orders-sqlstore" in _server_subscriptions(declared_world)

    refused = cli_runner.invoke(cli, ["subs", "drop", "orders-rethinkdb", "--yes"])
    assert refused.exit_code == 2
    assert "refusing to drop 'orders-rethinkdb'" in refused.output
    assert "client-000" in refused.output and "client-001" in refused.output
    assert "orders-rethinkdb" in _server_subscriptions(declared_world)
    assert audit.read(rt.sql, "orders-rethinkdb")[0].action == "drop-refused"

    forced = cli_runner.invoke(cli, ["subs", "drop", "orders-rethinkdb", "--yes", "--force"])
    assert forced.exit_code == 0, forced.output
    assert "orders-rethinkdb" not in _server_subscriptions(declared_world)
    entry = audit.read(rt.sql, "orders-rethinkdb")[0]
    assert entry.action == "drop" and entry.details["force"] is True

    assert cli_runner.invoke(cli, ["subs", "drop", "orders-sqlstore", "--yes"]).exit_code == 0
    assert "orders-sqlstore" not in _server_subscriptions(declared_world)


def test_legacy_drop_allowed_once_no_client_reads_old_store(declared_world) -> None:
    """Through the seam: when the readers hook reports nobody on the old store, the
    legacy subscription drops without --force; the hook gets the subscription's entity."""
    rt = declared_world.runtime
    manage.add(rt, "customers-rethinkdb")
    asked = []

    def nobody(runtime, entity):
        asked.append(entity.name)
        return []

    manage.drop(rt, "customers-rethinkdb", readers=nobody)
    assert asked == ["customers"]
    assert "customers-rethinkdb" not in _server_subscriptions(declared_world)
    with pytest.raises(manage.DropRefused):
        manage.add(rt, "customers-rethinkdb")
        manage.drop(rt, "customers-rethinkdb", readers=lambda runtime, entity: ["client-7"])
