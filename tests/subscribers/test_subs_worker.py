"""The handler worker against a real Pub/Sub server and real stores.

Every test ends by comparing the store with the reference model of the events
(:func:`cutover.synthetic.reference`): a lost, duplicated or misordered write, or a
message acked before its batch committed and then lost, shows up as a difference.
"""

from __future__ import annotations

import signal
import time

from pydantic import SecretStr
from subs_support import (
    publish,
    rethink_differences,
    sql_differences,
    stop_process,
    wait_equal,
    wait_until,
)

from cutover.synthetic import generate_history, with_faults
from subscribers import counters, manage


def _history(entity, seed: int, ids_per_client: int = 600):
    """5,000+ events: 4 clients, up to 4 versions per id, deletes, 15% duplicates, shuffled."""
    original = generate_history(
        entity, clients=4, ids_per_client=ids_per_client, versions=4, delete_rate=0.2, seed=seed
    )
    events = with_faults(original, duplicate_rate=0.15, shuffle=True, seed=seed)
    assert len(events) >= 5000
    assert any(e.op == "delete" for e in events)
    assert len({e.event_id for e in events}) < len(events)  # duplicates present
    return events


def test_sqlstore_sink_two_workers_end_equal_to_reference(world) -> None:
    """Two workers share one subscription (the scale-out path) into PostgreSQL.

    Duplicates and stale versions must be skipped by the version rules, deletes must
    leave tombstones; any other outcome is a difference from the reference.
    """
    rt = world.runtime
    manage.add(rt, "orders-sqlstore")
    events = _history(world.entity, seed=11)
    publish(world.settings, events)

    with (
        world.worker("orders-sqlstore") as w1,
        world.worker("orders-sqlstore", runtime=world.new_runtime()) as w2,
    ):
        wait_until(
            lambda: world.processed("orders-sqlstore") >= len(events), 120, "every event committed"
        )
    assert sql_differences(rt.sql, world.entity, events) == []

    totals = [w1.totals("orders-sqlstore"), w2.totals("orders-sqlstore")]
    handled = sum(t["applied"] + t["stale"] + t["failed"] for t in totals)
    stored = counters.read_all(rt.sql)["orders-sqlstore"]
    # The persistent counters are written in the batches' transactions: they agree
    # with what the workers' metrics saw committed.
    assert stored.processed == handled >= len(events)
    assert stored.failed == 0
    assert stored.stale > 0  # duplicates and out-of-order versions were skipped
    assert stored.last_event_at == max(e.occurred_at for e in events)
    lag = w1.metrics.registry.get_sample_value(
        "cutover_subs_event_lag_seconds_count", {"subscription": "orders-sqlstore"}
    )
    assert lag == totals[0]["applied"] + totals[0]["stale"]


def test_rethinkdb_sink_ends_equal_to_reference(world) -> None:
    """The legacy sink writes RethinkDB with the same version rules (tombstone documents
    for deletes); its counters still go to the SQL store."""
    rt = world.runtime
    manage.add(rt, "orders-rethinkdb")
    events = _history(world.entity, seed=12, ids_per_client=550)
    publish(world.settings, events)

    with world.worker("orders-rethinkdb"):
        wait_until(
            lambda: world.processed("orders-rethinkdb") >= len(events),
            120,
            "every event written to RethinkDB",
        )
    assert rethink_differences(rt.rethink, world.entity, events) == []
    assert rt.sql.count(world.entity, include_deleted=True) == 0  # nothing leaked to SQL


def test_sigkill_mid_stream_then_restart_loses_nothing(world) -> None:
    """A worker process killed with SIGKILL acks nothing it did not commit.

    Its unacked messages come back after the ack deadline; a second process, stopped
    with SIGTERM mid-stream, must exit 0 after committing its batch in hand; a third
    finishes. Lost messages would leave the SQL table different from the reference.
    """
    rt = world.runtime
    manage.add(rt, "orders-sqlstore")
    events = _history(world.entity, seed=13)
    publish(world.settings, events)

    first = world.spawn("orders-sqlstore")
    wait_until(
        lambda: world.processed("orders-sqlstore") >= 300, 60, "the first commits", interval=0.02
    )
    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    at_kill = world.processed("orders-sqlstore")
    assert at_kill < len(events), "the worker finished before it could be killed mid-stream"

    second = world.spawn("orders-sqlstore")
    wait_until(
        lambda: world.processed("orders-sqlstore") >= at_kill + 500,
        60,
        "the second worker's commits",
        interval=0.02,
    )
    assert stop_process(second, signal.SIGTERM) == 0

    third = world.spawn("orders-sqlstore")
    try:
        wait_equal(
            lambda: sql_differences(rt.sql, world.entity, events), 120, "the table vs the reference"
        )
    finally:
        assert stop_process(third, signal.SIGTERM) == 0
    assert sql_differences(rt.sql, world.entity, events) == []


def test_sql_server_stopped_mid_stream_worker_recovers(world, private_postgres) -> None:
    """The SQL server goes away for several seconds while events keep arriving.

    The worker must nack (not ack) the batches it cannot commit, keep running, and
    catch up by itself when the server is back: the table then equals the reference,
    so no message was acked before its commit.
    """
    world.settings = world.settings.model_copy(update={"sql_dsn": SecretStr(private_postgres.dsn)})
    rt = world.runtime  # the first runtime: on the private server
    assert rt.settings.sql_dsn == SecretStr(private_postgres.dsn)
    manage.add(rt, "orders-sqlstore")
    events = _history(world.entity, seed=14)
    half = len(events) // 2

    with world.worker("orders-sqlstore", runtime=rt) as worker:
        publish(world.settings, events[:half])
        wait_until(lambda: world.processed("orders-sqlstore") >= half, 60, "the first half")
        private_postgres.stop()
        down_at = time.monotonic()
        publish(world.settings, events[half:])  # arrives while the store is down
        wait_until(
            lambda: worker.totals("orders-sqlstore")["nacked_batches"] >= 2,
            30,
            "batches nacked during the outage",
        )
        time.sleep(max(0.0, 4 - (time.monotonic() - down_at)))
        assert worker.error is None
        private_postgres.start()
        wait_equal(
            lambda: sql_differences(rt.sql, world.entity, events),
            120,
            "the table vs the reference after the outage",
        )
        assert worker.error is None
        nacked = worker.totals("orders-sqlstore")["nacked_batches"]
    assert nacked >= 2
    assert sql_differences(rt.sql, world.entity, events) == []
    assert world.processed("orders-sqlstore") >= len(events)
