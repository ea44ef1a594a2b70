"""The backfill racing the double-write, and several workers sharing one run.

The subscription worker is stood in for by what it does: ``SqlStore.apply`` of the
newer events (duplicated, reordered) from another thread or between backfill batches.
Whatever the interleaving, the SQL store must end with the newest version of every id
and no deleted id may come back.
"""

from __future__ import annotations

import random
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from backfill_helpers import FAST, assert_state, docs_for, history_state, quiet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backfill import ledger
from backfill.partitions import partitions_of
from backfill.runner import Backfill
from backfill.sources import DocStream, ExportSource, RethinkSource, find_table_file
from backfill.tables import PARTITIONS, TABLES
from core.clock import now_utc
from core.config import Entity
from core.events import Event
from cutover.synthetic import generate_history, reference, with_faults
from stores.mapping import Row, row_from_event
from stores.sql import SqlStore, bookkeeping

Export = Callable[[Entity, list[dict[str, Any]]], ExportSource]
Live = Callable[[Entity, list[dict[str, Any]]], RethinkSource]


def _reset(sql: SqlStore, entity: Entity) -> None:
    ledger.ensure_tables(sql)
    with sql.transaction() as cur:
        for table in (sql.table(entity), *TABLES):
            cur.execute(f"DELETE FROM {sql.dialect.quote(table.name)}")


def _split_history(entity: Entity, seed: int) -> tuple[list[Row], list[Event], dict[str, Row]]:
    """Old-store snapshot rows, the subscription's events, and the expected final state.

    Per id the old store holds the state after its first k events (none when k = 0); the
    subscription delivers the events from version s on (s <= k + 1, so the two overlap or
    meet), duplicated and shuffled.
    """
    rng = random.Random(seed)
    events = generate_history(
        entity, clients=2, ids_per_client=12, versions=4, delete_rate=0.35, seed=seed
    )
    by_id: dict[str, list[Event]] = {}
    for e in events:
        by_id.setdefault(e.id, []).append(e)
    snapshot: list[Row] = []
    delivered: list[Event] = []
    for evs in by_id.values():
        k = rng.randint(0, len(evs))
        if k:
            snapshot.append(row_from_event(entity, evs[k - 1]))
        s = rng.randint(1, k + 1)
        delivered += [e for e in evs if e.version >= s]
    delivered = with_faults(delivered, duplicate_rate=0.2, seed=seed)
    expected = reference(entity, delivered)
    for row in snapshot:
        held = expected.get(row.key)
        if held is None or row.rank > held.rank:
            expected[row.key] = row
    return snapshot, delivered, expected


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(2, 20),
    cuts=st.lists(st.integers(0, 12), min_size=1, max_size=6),
)
def test_interleavings_end_in_the_newest_version(
    sql_store: SqlStore,
    orders: Entity,
    export_of: Export,
    seed: int,
    batch: int,
    cuts: list[int],
) -> None:
    """Subscription chunks land before the run, between any two batches, or after it."""
    _reset(sql_store, orders)
    snapshot, delivered, expected = _split_history(orders, seed)
    rows = [row_from_event(orders, e) for e in delivered]
    cuts = sorted(cuts)
    size = -(-len(rows) // len(cuts))
    chunks = {i: rows[i * size : (i + 1) * size] for i in range(len(cuts))}
    after_batch: dict[int, list[Row]] = {}
    for i, cut in enumerate(cuts):
        after_batch.setdefault(cut, []).extend(chunks[i])
    sql_store.apply(orders, after_batch.pop(0, []))
    done = [0]

    def subscription(_part: Any, _batch: Any) -> None:
        done[0] += 1
        sql_store.apply(orders, after_batch.pop(done[0], []))

    source = export_of(orders, docs_for(orders, snapshot))
    summary = Backfill(
        sql_store, source, orders, replace(FAST, batch=batch), progress=quiet, on_batch=subscription
    ).run()
    for rest in after_batch.values():
        sql_store.apply(orders, rest)
    assert summary.complete
    assert_state(sql_store, orders, expected)


def test_threads_racing_on_postgres_with_live_rethinkdb(
    pg_store: SqlStore, orders: Entity, live_of: Live
) -> None:
    """A real subscription thread and the backfill write the same ids at the same time."""
    snapshot, delivered, expected = _split_history(orders, seed=77)
    rows = [row_from_event(orders, e) for e in delivered]
    source = live_of(orders, docs_for(orders, snapshot))
    started = threading.Event()

    def subscription() -> None:
        started.wait()
        for i in range(0, len(rows), 4):
            pg_store.apply(orders, rows[i : i + 4])
            time.sleep(0.001)

    thread = threading.Thread(target=subscription)
    thread.start()
    job = Backfill(
        pg_store,
        source,
        orders,
        replace(FAST, batch=5, workers=2),
        progress=quiet,
        on_batch=lambda p, b: started.set(),
    )
    summary = job.run()
    started.set()
    thread.join()
    assert summary.complete
    assert_state(pg_store, orders, expected)


def _partition_docs(source: ExportSource, entity: Entity, spec: dict[str, Any]) -> int:
    path = find_table_file(source.folder, entity)
    return sum(1 for _ in DocStream(path, spec["start"], spec["end"]))


def test_two_machines_share_a_run_without_copying_a_partition_twice(
    sql_store: SqlStore, sql_dsn: tuple[str, str], orders: Entity, export_of: Export
) -> None:
    """Two independent backfills (own store objects, like two machines), two workers each."""
    state = history_state(orders, clients=4, ids=80, seed=12)
    source = export_of(orders, docs_for(orders, state.values()))
    source.partition_bytes = 6000
    ledger.ensure_tables(sql_store)  # `cutover db init` first, as in production
    stores = [SqlStore(sql_dsn[1], sql_dsn[0], sql_store.config) for _ in range(2)]
    summaries: list[Any] = []
    jobs = [
        Backfill(s, source, orders, replace(FAST, workers=2, batch=10), progress=quiet)
        for s in stores
    ]
    threads = [threading.Thread(target=lambda j=j: summaries.append(j.run())) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(summaries) == 2 and all(s.complete for s in summaries)
    parts = partitions_of(sql_store, jobs[0].run_id)
    assert len(parts) > 4 and all(p.status == "done" for p in parts)
    for p in parts:  # each document of each range was read (and counted) exactly once
        assert p.rows_read == _partition_docs(source, orders, p.spec), p.part
    assert sum(s.session_rows for s in summaries) == len(state)
    assert_state(sql_store, orders, state)
    for s in stores:
        s.close()


def _set_lease(sql: SqlStore, run_id: str, part: str, owner: str, seconds: float) -> None:
    from datetime import timedelta

    with sql.transaction() as cur:
        bookkeeping.update(
            cur,
            sql.dialect,
            PARTITIONS,
            {"owner": owner, "lease_expires": now_utc() + timedelta(seconds=seconds)},
            {"run_id": run_id, "part": part},
        )


def _planned(sql: SqlStore, source: ExportSource, entity: Entity) -> Backfill:
    """A run that is planned but not started (a dry plan through a zero-batch stop)."""
    job = Backfill(sql, source, entity, replace(FAST, batch=10), progress=quiet)
    job.stop()
    job.run()
    return job


def test_a_dead_workers_partition_is_taken_over(
    sql_store: SqlStore, orders: Entity, export_of: Export
) -> None:
    state = history_state(orders, clients=2, ids=60, seed=3)
    source = export_of(orders, docs_for(orders, state.values()))
    source.partition_bytes = 5000
    job = _planned(sql_store, source, orders)
    parts = partitions_of(sql_store, job.run_id)
    # Another machine claimed two partitions and died: one lease expires soon, the other
    # belongs to a process of THIS machine that no longer exists (taken over at once).
    gone = subprocess.Popen(["true"])
    gone.wait()
    _set_lease(sql_store, job.run_id, parts[0].part, "elsewhere/1/dead", 1.0)
    _set_lease(
        sql_store, job.run_id, parts[1].part, f"{socket.gethostname()}/{gone.pid}/dead", 3600
    )
    job = Backfill(sql_store, source, orders, replace(FAST, batch=10), progress=quiet)
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(job.run()))
    thread.start()
    thread.join(30)  # the expired lease needs ~1 s; the dead local owner none at all
    job.stop()
    thread.join()
    assert result and result[0].complete
    assert_state(sql_store, orders, state)


def test_a_live_lease_elsewhere_is_left_alone(
    sql_store: SqlStore, orders: Entity, export_of: Export
) -> None:
    state = history_state(orders, clients=2, ids=40, seed=8)
    source = export_of(orders, docs_for(orders, state.values()))
    source.partition_bytes = 5000
    job = _planned(sql_store, source, orders)
    held = partitions_of(sql_store, job.run_id)[0]
    _set_lease(sql_store, job.run_id, held.part, "elsewhere/1/alive", 3600)
    options = replace(FAST, batch=10, wait_for_others=False)
    summary = Backfill(sql_store, source, orders, options, progress=quiet).run()
    assert not summary.complete
    after = {p.part: p for p in partitions_of(sql_store, job.run_id)}
    assert after[held.part].rows_read == 0 and after[held.part].owner == "elsewhere/1/alive"
    assert all(p.status == "done" for k, p in after.items() if k != held.part)


def test_a_batch_whose_lease_was_taken_rolls_back(
    sql_store: SqlStore, orders: Entity, export_of: Export
) -> None:
    """The checkpoint is the last statement of the batch's transaction: when another worker
    owns the partition now, the rows of that batch are rolled back with it."""
    state = history_state(orders, clients=1, ids=60, seed=6, delete_rate=0.0)
    source = export_of(orders, docs_for(orders, state.values()))
    job_id: list[str] = []

    def steal(part: Any, _batch: Any) -> None:
        if part.rows_read == 0 and not job_id:
            job_id.append(part.part)
            _set_lease(sql_store, part.run_id, part.part, "thief/1/x", 3600)

    options = replace(FAST, batch=10, wait_for_others=False)
    job = Backfill(sql_store, source, orders, options, progress=quiet, on_batch=steal)
    summary = job.run()
    assert not summary.complete
    (part,) = partitions_of(sql_store, job.run_id)
    assert part.owner == "thief/1/x" and part.rows_read == 10
    assert sql_store.count(orders, include_deleted=True) == 10  # the second batch rolled back


@pytest.mark.parametrize("workers", [1, 3])
def test_pause_takes_effect_within_a_batch_and_resume_finishes(
    pg_store: SqlStore, orders: Entity, export_of: Export, workers: int
) -> None:
    from backfill import control

    state = history_state(orders, clients=3, ids=100, seed=10)
    source = export_of(orders, docs_for(orders, state.values()))
    source.partition_bytes = 8000
    options = replace(FAST, batch=10, rate=600, workers=workers)
    job = Backfill(pg_store, source, orders, options, progress=quiet)
    ledger.ensure_tables(pg_store)
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(job.run()))
    thread.start()
    deadline = time.monotonic() + 30
    while sum(p.rows_read for p in partitions_of(pg_store, job.run_id)) < 50:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    control.set_paused(pg_store, "orders", True)
    paused_at = sum(p.rows_read for p in partitions_of(pg_store, job.run_id))
    time.sleep(0.6)
    settled = sum(p.rows_read for p in partitions_of(pg_store, job.run_id))
    assert settled - paused_at <= workers * options.batch  # at most the batches in flight
    time.sleep(0.4)
    assert sum(p.rows_read for p in partitions_of(pg_store, job.run_id)) == settled
    assert thread.is_alive()
    control.set_paused(pg_store, "orders", False)
    thread.join(60)
    assert result and result[0].complete
    assert_state(pg_store, orders, state)
