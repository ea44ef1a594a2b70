"""Job workers on a real Pub/Sub server and a real PostgreSQL: what happens to each client.

Every test ends by looking at the data itself: the SQL store holds exactly the old
store's newest rows for the clients whose jobs ran, each such client's ledger entry is
``verified``, and the job table and attempts say how many copies ran, by whom, when.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from jobs_support import JobsWorld, documents, history

from backfill import jobs, ledger
from backfill.partitions import partitions_of
from backfill.tables import JOBS
from core import pubsub
from core.config import Entity
from cutover.cli import cli
from stores.mapping import Row, same_value
from stores.sql import SqlStore, bookkeeping
from subscribers import failures


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def states(sql: SqlStore) -> dict[str, str]:
    return {e.client: e.state for e in ledger.entries(sql, "orders")}


def assert_rows(sql: SqlStore, entity: Entity, expected: dict[str, Row], clients: set[str]) -> None:
    """The SQL store's live rows of these clients are exactly the expected live rows."""
    held = {
        r.key: r for r in sql.scan(entity, None, include_deleted=False) if r.client_id in clients
    }
    want = {k: r for k, r in expected.items() if r.client_id in clients and not r.deleted}
    assert sorted(held) == sorted(want)
    for key, row in want.items():
        got = held[key]
        assert got.version == row.version, key
        for col in entity.columns:
            assert same_value(col, got.values.get(col.name), row.values.get(col.name)), key


def publish_raw(
    world: JobsWorld, bodies: list[bytes], attributes: dict[str, str] | None = None
) -> None:
    """Messages on the jobs topic as any producer could send them (no dedup)."""
    client = pubsub.publisher(world.settings, ordering=False)
    topic = pubsub.topic_path(world.settings, world.runtime.cfg.jobs_or_error().topic)
    for future in [client.publish(topic, b, **(attributes or {})) for b in bodies]:
        future.result(timeout=30)


def job_rows(sql: SqlStore) -> dict[str, dict[str, Any]]:
    with sql.transaction() as cur:
        return {
            r["client"]: r for r in bookkeeping.select(cur, sql.dialect, JOBS, {"entity": "orders"})
        }


def test_duplicated_and_reordered_job_messages_copy_each_client_once(jobs_world: JobsWorld) -> None:
    w = jobs_world
    rows = history(w.entity, clients=6, ids=15)
    folder = w.export(documents(w.entity, rows))
    clients = sorted({r.client_id for r in rows.values()})
    now = jobs.Job("orders", "x").enqueued_at
    # Three copies of every job, in a shuffled order, enqueued_at out of order too:
    # what a retried publish and a redelivering server can make of them.
    bodies = [
        jobs.Job(
            "orders", c, "sweep", now.replace(microsecond=random.Random(i).randrange(10**6))
        ).to_bytes()
        for i, c in enumerate(clients * 3)
    ]
    random.Random(5).shuffle(bodies)
    publish_raw(w, bodies)
    with w.worker(folder) as one, w.worker(folder) as two:
        wait_for(lambda: one.finished + two.finished >= len(bodies), "every message")
    sql = w.runtime.sql
    assert states(sql) == dict.fromkeys(clients, "verified")
    assert_rows(sql, w.entity, rows, set(clients))
    table = job_rows(sql)
    for client in clients:
        outcomes = [a["outcome"] for a in jobs.attempts_of(sql, "orders", client)]
        # one copy, then two duplicates that found the client verified and unchanged
        assert table[client]["copies"] == 1, (client, outcomes)
        assert sorted(outcomes) == ["done", "unchanged", "unchanged"], (client, outcomes)


def test_a_lease_left_by_a_dead_worker_is_closed_by_the_next_delivery(
    jobs_world: JobsWorld,
) -> None:
    w = jobs_world
    rows = history(w.entity, clients=1, ids=5)
    folder = w.export(documents(w.entity, rows))
    sql = w.runtime.sql
    jobs.enqueue(w.runtime, "orders", ["client-000"])
    with w.worker(folder) as worker:
        wait_for(lambda: worker.finished >= 1, "the job")
        # a worker that died after recording its verification, before closing its job,
        # leaves a running row whose lease has expired
        assert jobs.acquire(
            sql,
            "orders",
            "client-000",
            owner="gone/1/x",
            attempt_id="dead",
            ttl_s=0.0,
            message_id="m-dead",
            delivery_attempt=1,
        )
        assert job_rows(sql)["client-000"]["state"] == "running"
        publish_raw(w, [jobs.Job("orders", "client-000").to_bytes()])
        wait_for(lambda: worker.finished >= 2, "the redelivered job")
    row = job_rows(sql)["client-000"]
    assert (row["state"], row["owner"], row["copies"]) == ("done", None, 1)
    assert [a["outcome"] for a in jobs.attempts_of(sql, "orders", "client-000")] == [
        "done",
        None,
        "unchanged",
    ]


def _cli(world: JobsWorld, *args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), env=world.env(), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_the_sweep_skips_verified_clients_and_queued_ones(
    jobs_world: JobsWorld, tmp_path: Path
) -> None:
    w = jobs_world
    rows = history(w.entity, clients=5, ids=8)
    folder = w.export(documents(w.entity, rows))
    clients = sorted({r.client_id for r in rows.values()})
    jobs.enqueue(w.runtime, "orders", clients[:2])
    with w.worker(folder) as worker:
        wait_for(lambda: worker.finished >= 2, "the first two jobs")
    assert states(w.runtime.sql) == dict.fromkeys(clients[:2], "verified")

    active = tmp_path / "active.txt"
    active.write_text(f"# busiest first\n{clients[4]}\n{clients[0]}\n")
    sweep = ["jobs", "enqueue", "orders", "--all-not-migrated", "--from-export", str(folder)]
    dry = _cli(w, *sweep, "--active-first", str(active), "--dry-run")
    listed = [
        line.split("/")[1]
        for line in dry.output.splitlines()
        if line.startswith("would enqueue orders/")
    ]
    # the listed client first, the verified ones skipped, the rest after
    assert listed == [clients[4], clients[2], clients[3]]
    assert "skipped 2 verified" in dry.output
    assert not job_rows(w.runtime.sql).get(clients[4])  # a dry run publishes nothing

    done = _cli(w, *sweep, "--active-first", str(active))
    assert f"enqueued orders/{clients[4]}" in done.output
    again = _cli(w, *sweep)
    assert "enqueued 0 job(s); skipped 3 queued, 2 verified" in again.output
    with w.worker(folder) as worker:
        wait_for(lambda: worker.finished >= 3, "the swept jobs")
    assert states(w.runtime.sql) == dict.fromkeys(clients, "verified")
    assert {r["enqueues"] for r in job_rows(w.runtime.sql).values()} == {1}

    listed = {r["name"]: r for r in json.loads(_cli(w, "subs", "list", "--json").output)}
    jobs_sub = listed["cutover-jobs"]  # declared in [jobs], created by `cutover jobs add`
    assert (jobs_sub["declared"], jobs_sub["exists"], jobs_sub["sink"]) == (True, True, "jobs")
    # the local server drops retry policies (cutover then enforces backoff itself)
    assert all(d.startswith("retry_") for d in jobs_sub["drift"]), jobs_sub["drift"]
    status = json.loads(_cli(w, "jobs", "status", "orders", "--json").output)
    assert (status["done"], status["queued"], status["failed"], status["not_migrated"]) == (
        5,
        0,
        0,
        0,
    )
    assert status["rows_per_s"] > 0 and status["eta_s"] == 0


def test_bad_job_messages_go_to_the_failure_log_with_the_reason(jobs_world: JobsWorld) -> None:
    w = jobs_world
    rows = history(w.entity, clients=1, ids=5)
    folder = w.export(documents(w.entity, rows))
    good = jobs.Job("orders", "client-000").to_bytes()
    bad = {
        b"{not json": "not a UTF-8 JSON job message",
        json.dumps(
            {"kind": "cutover.job", "v": 9, "entity": "orders", "client": "c"}
        ).encode(): "version 9",
        json.dumps(
            {"kind": "cutover.job", "v": 1, "entity": "nope", "client": "c"}
        ).encode(): "unknown entity 'nope'",
        json.dumps({"kind": "cutover.event", "id": "o-1"}).encode(): "not a job message",
    }
    publish_raw(w, [*bad, good], {"entity": "orders"})
    with w.worker(folder) as worker:
        wait_for(lambda: worker.finished >= len(bad) + 1, "every message")
        time.sleep(1)  # long enough for an unacked bad message to come back (it must not)
        assert worker.settled == {"bad-message": len(bad), "done": 1}
    logged = failures.list_failures(w.runtime.sql, subscription="cutover-jobs")
    assert sorted(f.data for f in logged) == sorted(bad)
    for f in logged:
        assert bad[f.data] in f.error and f.error.startswith("bad job message")
        assert f.entity == "orders"
    assert states(w.runtime.sql) == {"client-000": "verified"}  # the good one still ran


def test_a_failing_client_is_logged_after_the_last_attempt_and_replays_after_a_fix(
    jobs_world: JobsWorld,
) -> None:
    w = jobs_world
    rows = history(w.entity, clients=2, ids=6, delete_rate=0)
    docs = documents(w.entity, rows)
    broken = next(d for d in docs if d["client_id"] == "client-000")
    broken["amount"] = "not a number"  # the mapping rejects it: the copy cannot complete
    folder = w.export(docs)
    jobs.enqueue(w.runtime, "orders", ["client-000", "client-001"])
    sql = w.runtime.sql
    attempts = w.runtime.cfg.jobs_or_error().max_delivery_attempts
    with w.worker(folder) as worker:
        wait_for(lambda: worker.settled.get("failed") == 1, "the last attempt", timeout=90)
        assert worker.settled.get("retrying") == attempts - 1
        [entry] = failures.list_failures(sql, subscription="cutover-jobs")
        assert entry.attempts == attempts and entry.status == "open"
        assert "client-000" in entry.text and "amount" in entry.error, entry.error
        assert job_rows(sql)["client-000"]["state"] == "failed"
        assert states(sql) == {"client-000": "copied", "client-001": "verified"}

        broken["amount"] = 12.5  # fixed in the old store (a new export of it)
        w.export(docs)
        outcome = failures.replay(w.runtime, entry)
        assert outcome.result == "requeued", outcome
        wait_for(lambda: states(sql).get("client-000") == "verified", "the replayed job")
    assert failures.get(sql, entry.message_id).status == "replayed"
    fixed = {k: r for k, r in rows.items()}
    key = broken["id"]
    fixed[key] = Row(
        key, "client-000", rows[key].version, False, {**rows[key].values, "amount": 12.5}
    )
    assert_rows(sql, w.entity, fixed, {"client-000", "client-001"})
    assert job_rows(sql)["client-000"]["state"] == "done"


def test_a_worker_killed_mid_copy_is_redelivered_and_its_copy_resumed(
    jobs_world: JobsWorld,
) -> None:
    w = jobs_world
    rows = history(w.entity, clients=1, ids=400, delete_rate=0)
    folder = w.export(documents(w.entity, rows))
    sql = w.runtime.sql
    ttl = w.runtime.cfg.jobs_or_error().lease_ttl_s
    jobs.enqueue(w.runtime, "orders", ["client-000"])
    slow = w.spawn("--from-export", str(folder), "--rate", "100", "--batch", "20", log="slow.log")
    try:
        # wait until the slow worker has committed some batches of the client's copy
        def copying() -> bool:
            return any(p.rows_read > 0 for run in _runs(sql) for p in partitions_of(sql, run))

        wait_for(copying, "the first worker to copy", timeout=60)
        spare = w.spawn("--from-export", str(folder), "--rate", "0", log="spare.log")
        slow.send_signal(signal.SIGKILL)
        slow.wait(10)
        wait_for(
            lambda: states(sql).get("client-000") == "verified", "the redelivered job", timeout=90
        )
    finally:
        for proc in (slow, locals().get("spare")):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
    assert_rows(sql, w.entity, rows, {"client-000"})
    first, second = jobs.attempts_of(sql, "orders", "client-000")
    assert first["outcome"] is None and first["copied"]  # killed: it never finished
    assert second["outcome"] == "done" and second["owner"] != first["owner"]
    # the second copy began only once the first one's lease had run out: never both
    assert (second["started_at"] - first["heartbeat_at"]).total_seconds() >= ttl * 0.9
    assert job_rows(sql)["client-000"]["copies"] == 2
    # the copy resumed from its checkpoint: no document was committed twice
    [run] = _runs(sql)
    assert sum(p.rows_read for p in partitions_of(sql, run)) == len(rows)


def test_sigterm_finishes_the_job_in_hand_then_exits(jobs_world: JobsWorld) -> None:
    w = jobs_world
    rows = history(w.entity, clients=1, ids=200, delete_rate=0)
    folder = w.export(documents(w.entity, rows))
    sql = w.runtime.sql
    jobs.enqueue(w.runtime, "orders", ["client-000"])
    proc = w.spawn("--from-export", str(folder), "--rate", "100", "--batch", "20", log="term.log")
    try:
        wait_for(
            lambda: any(p.rows_read > 0 for run in _runs(sql) for p in partitions_of(sql, run)),
            "the worker to copy",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, w.log("term.log")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # the copy in hand was finished, verified and acked before the worker exited
    assert states(sql) == {"client-000": "verified"}
    assert [a["outcome"] for a in jobs.attempts_of(sql, "orders", "client-000")] == ["done"]
    assert_rows(sql, w.entity, rows, {"client-000"})


def _runs(sql: SqlStore) -> list[str]:
    from backfill.partitions import runs_for

    return [r.run_id for r in runs_for(sql, "orders")]
