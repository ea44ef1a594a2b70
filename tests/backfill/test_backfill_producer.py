"""Large copies prepare their batches in a child process: same result, nothing lost.

``Options(processes=True)`` forces what a large run does on its own (a reader process
per worker, ``backfill/producer.py``), so these tests exercise it on small histories.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from backfill_helpers import FAST, assert_state, child_pids, docs_for, history_state, quiet

from backfill.partitions import partitions_of
from backfill.producer import AHEAD, ProcessProducer
from backfill.runner import Backfill
from backfill.sources import ExportSource, RethinkSource, SourceError
from core.config import Entity
from stores.sql import SqlStore

Export = Callable[[Entity, list[dict[str, Any]]], ExportSource]
Live = Callable[[Entity, list[dict[str, Any]]], RethinkSource]

#: Without the warm-up, a small run would be prepared in the worker before the child
#: is even ready (test_batches_prepared_while_the_reader_starts_... covers that path).
IN_CHILD = replace(FAST, processes=True, reader_warm_up=False)


def _reader_pids() -> list[int]:
    """This process's children running ``python -m backfill._reader``."""
    return child_pids(os.getpid(), b"backfill._reader")


def _wait_gone(deadline_s: float = 5.0) -> list[int]:
    end = time.monotonic() + deadline_s
    while _reader_pids() and time.monotonic() < end:
        time.sleep(0.05)
    return _reader_pids()


def test_export_copy_in_a_reader_process_matches_the_model(
    sql_store: SqlStore, orders: Entity, export_of: Export
) -> None:
    """Rows, tombstones, bad-document records and ledger counts all cross the process
    boundary; the reader really is a child process, and it is gone afterwards."""
    state = history_state(orders, clients=3, ids=60, seed=21)
    docs = docs_for(orders, state.values())
    docs[5:5] = [{"id": "bad-type", "client_id": "client-000", "version": 1, "quantity": "x"}]
    readers: list[list[int]] = []
    job = Backfill(
        sql_store,
        export_of(orders, docs),
        orders,
        replace(IN_CHILD, workers=2),
        progress=quiet,
        on_batch=lambda part, batch: readers.append(_reader_pids()),
    )
    summary = job.run()
    assert summary.complete and summary.read == len(state) + 1
    assert [b.ref for b in summary.bad] == ["key:bad-type"]
    assert_state(sql_store, orders, state)
    assert readers and all(len(pids) >= 1 for pids in readers)
    assert _wait_gone() == []


def test_live_copy_in_a_reader_process(pg_store: SqlStore, orders: Entity, live_of: Live) -> None:
    """The RethinkDB source is pickled without its connections; the child opens its own."""
    state = history_state(orders, clients=3, ids=40, seed=22)
    source = live_of(orders, docs_for(orders, state.values()))
    summary = Backfill(pg_store, source, orders, IN_CHILD, progress=quiet).run()
    assert summary.complete and summary.partitions == 3
    assert_state(pg_store, orders, state)


def test_a_killed_reader_process_loses_nothing(
    sql_store: SqlStore, orders: Entity, export_of: Export
) -> None:
    """SIGKILL of the reader after the first commit: the run stops with an error naming
    the reader; every committed batch stays committed, and the same run resumes from
    its checkpoint to the same final state."""
    state = history_state(orders, clients=2, ids=300, seed=23)  # more batches than in flight
    source = export_of(orders, docs_for(orders, state.values()))
    killed: list[int] = []

    def kill_reader(_part: Any, _batch: Any) -> None:
        if not killed:
            killed.extend(_reader_pids())
            for pid in killed:
                os.kill(pid, signal.SIGKILL)

    job = Backfill(sql_store, source, orders, IN_CHILD, progress=quiet, on_batch=kill_reader)
    with pytest.raises(RuntimeError, match=r"reader process .* ended .*run again to resume"):
        job.run()
    assert killed
    (part,) = partitions_of(sql_store, job.run_id)
    # What was committed stays: the batches in hand when the reader died (one committed,
    # one committing), and any of the AHEAD batches it had already sent.
    assert part.status != "done"
    assert part.rows_read in {FAST.batch * k for k in range(1, AHEAD + 3)}
    assert sql_store.count(orders, include_deleted=True) == part.rows_read
    again = Backfill(sql_store, source, orders, IN_CHILD, progress=quiet).run()
    assert again.complete and again.read == len(state)
    assert_state(sql_store, orders, state)
    assert _wait_gone() == []


def test_a_read_error_in_the_reader_process_is_the_same_error(
    sql_store: SqlStore, orders: Entity, tmp_path: Path
) -> None:
    """A corrupt document is the same bad document (at the same byte offset) whether or
    not a child reads it, and its neighbour is copied; an export that cannot be read at
    all fails with the same error in both."""
    folder = tmp_path / "export" / orders.rethinkdb_db
    folder.mkdir(parents=True)
    path = folder / "orders.json"
    text = '[\n{"id": "a", "client_id": "c", "version": 1},\n{"id": "b", oops}\n]\n'
    for options in (FAST, IN_CHILD):
        path.write_text(text)
        job = Backfill(
            sql_store,
            ExportSource(tmp_path / "export"),
            orders,
            replace(options, restart=True),
            progress=quiet,
        )
        summary = job.run()
        assert summary.complete and summary.read == 2 and summary.applied + summary.stale == 1
        assert [b.ref for b in summary.bad] == ["at:orders.json@47"]
        assert "not valid JSON" in summary.bad[0].error

    def vanish(title: str, total: int | None, done: int) -> Any:
        path.unlink(missing_ok=True)  # planned, then gone before its reader opens it
        return quiet(title, total, done)

    for options in (FAST, IN_CHILD):
        path.write_text(text + " ")  # another export: a run of its own
        job = Backfill(
            sql_store, ExportSource(tmp_path / "export"), orders, options, progress=vanish
        )
        with pytest.raises(SourceError, match=r"no export file for orders"):
            job.run()
    assert _wait_gone() == []


def test_stopping_a_run_stops_its_reader_process(
    sql_store: SqlStore, orders: Entity, export_of: Export
) -> None:
    """Ctrl-C (``stop``) ends the run between batches and leaves no reader behind: the
    batches already committing (two with a reader process) finish, no more start."""
    state = history_state(orders, clients=2, ids=100, seed=24)
    source = export_of(orders, docs_for(orders, state.values()))
    job = Backfill(
        sql_store, source, orders, IN_CHILD, progress=quiet, on_batch=lambda p, b: job.stop()
    )
    summary = job.run()
    assert summary.stopped and not summary.complete
    assert summary.session_rows in {FAST.batch, 2 * FAST.batch}
    assert _wait_gone() == []


def test_batches_prepared_while_the_reader_starts_hand_over_exactly(
    sql_store: SqlStore, orders: Entity, export_of: Export
) -> None:
    """Until the child is ready, batches are prepared in the caller's thread; the child
    then takes over after the last of them: every document once, in order."""
    state = history_state(orders, clients=2, ids=250, seed=23, delete_rate=0.0)
    docs = docs_for(orders, state.values())
    source = export_of(orders, docs)
    [part] = source.plan(orders, None, workers=1, active_first=False)
    producer = ProcessProducer(source, sql_store.encoder(orders), 7, name="test-reader")
    keys: list[str] = []
    try:
        producer.open(part.spec, None, None)
        while True:
            batch = producer.take()
            keys += [row[0] for chunk in batch.rows.chunks for row in json.loads(chunk)]
            if batch.exhausted:
                break
            producer.request()
            time.sleep(0.02)  # a commit's worth of time: the child gets ready meanwhile
    finally:
        producer.close()
    assert keys == [d["id"] for d in docs]
    assert producer.batches_inline > 0 and producer.batches_in_child > 0
