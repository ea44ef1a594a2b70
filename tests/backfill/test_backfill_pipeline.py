"""Two batches committing at once: strict order, and nothing lost or counted twice.

``backfill/pipeline.py`` on its own (threads only), then the backfill run with two
commits in flight on real stores (SQLite and PostgreSQL): a failing commit, a pause.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from backfill_helpers import FAST, assert_state, docs_for, history_state, quiet

from backfill import control, ledger
from backfill.partitions import partitions_of
from backfill.pipeline import Abandoned, InOrderCommits, Turn
from backfill.runner import Backfill
from backfill.sources import ExportSource
from core.config import Entity
from stores.sql import SqlStore, StoreUnavailable

Export = Callable[[Entity, list[dict[str, Any]]], ExportSource]
TWO = replace(FAST, batch=10, commit_depth=2)


def _commit(
    log: list[str], name: str, *, fail: bool = False, hold: threading.Event | None = None
) -> Callable[[Turn], None]:
    """A commit that logs its steps; ``hold`` keeps it from writing until set."""

    def run(turn: Turn) -> None:
        turn.wait_to_write()
        if hold is not None:
            assert hold.wait(5)
        log.append(f"{name} wrote")
        turn.rows_written()
        turn.wait_for_previous()
        if fail:
            raise StoreUnavailable(f"{name} failed")
        log.append(f"{name} committed")

    return run


def test_batches_commit_in_order_and_a_failure_abandons_the_next() -> None:
    """b1 (keys after b0's) writes before b0 has; it still commits after b0. b2 behind
    a failed b1 rolls back."""
    log: list[str] = []
    b0_may_write = threading.Event()
    commits: InOrderCommits[str] = InOrderCommits(2, name="test-commit")
    try:
        commits.submit("b0", _commit(log, "b0", hold=b0_may_write), keys=("a", "c"))
        commits.submit("b1", _commit(log, "b1", fail=True), keys=("d", "f"))
        assert not commits.room
        deadline = time.monotonic() + 5
        while not log and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log == ["b1 wrote"]  # not held up by b0
        b0_may_write.set()
        assert commits.next_committed() == "b0"
        commits.submit("b2", _commit(log, "b2"), keys=("g", "h"))
        with pytest.raises(StoreUnavailable, match="b1 failed"):
            commits.next_committed()
        with pytest.raises(Abandoned):
            commits.next_committed()  # b2 did not commit: b1 before it failed
        assert not commits.busy
    finally:
        commits.close()
    assert log == ["b1 wrote", "b0 wrote", "b0 committed", "b2 wrote"]


def test_a_batch_sharing_keys_writes_after_the_one_before() -> None:
    """Key ranges that overlap: b1 waits until b0 has written, so neither can hold a
    row lock the other is waiting for."""
    log: list[str] = []
    b0_may_write = threading.Event()
    commits: InOrderCommits[str] = InOrderCommits(2, name="test-commit")
    try:
        commits.submit("b0", _commit(log, "b0", hold=b0_may_write), keys=("a", "m"))
        commits.submit("b1", _commit(log, "b1"), keys=("k", "z"))
        time.sleep(0.2)
        assert log == []
        b0_may_write.set()
        assert [commits.next_committed(), commits.next_committed()] == ["b0", "b1"]
    finally:
        commits.close()
    assert log == ["b0 wrote", "b0 committed", "b1 wrote", "b1 committed"] or log == [
        "b0 wrote",
        "b1 wrote",
        "b0 committed",
        "b1 committed",
    ]


def test_a_batch_gives_up_waiting_for_one_that_does_not_commit() -> None:
    """The safety net against a wait the database cannot see: after ``wait_s`` the
    later batch rolls back, and the earlier one goes on."""
    log: list[str] = []
    b0_may_write = threading.Event()
    commits: InOrderCommits[str] = InOrderCommits(2, name="test-commit", wait_s=0.2)
    try:
        commits.submit("b0", _commit(log, "b0", hold=b0_may_write), keys=("a", "b"))
        commits.submit("b1", _commit(log, "b1"), keys=("c", "d"))
        time.sleep(0.5)
        b0_may_write.set()
        assert commits.next_committed() == "b0"
        with pytest.raises(Abandoned, match=r"within 0\.2 s"):
            commits.next_committed()
    finally:
        commits.close()
    assert log == ["b1 wrote", "b0 wrote", "b0 committed"]


def test_a_failed_commit_with_another_in_flight_loses_and_doubles_nothing(
    sql_store: SqlStore, orders: Entity, export_of: Export, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The third batch's commit fails once while the fourth is writing: both roll back,
    are read again from the checkpoint, and every count (partition, ledger) is exact.
    (On SQLite, whose writers take turns, one batch commits at a time.)"""
    state = history_state(orders, clients=2, ids=40, seed=31)
    source = export_of(orders, docs_for(orders, state.values()))
    real_apply = sql_store.apply
    calls = [0]

    def apply_failing_once(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        result = real_apply(*args, **kwargs)
        if calls[0] == 3:
            raise StoreUnavailable("SQL store error: connection lost (injected)")
        return result

    monkeypatch.setattr(sql_store, "apply", apply_failing_once)
    job = Backfill(sql_store, source, orders, TWO, progress=quiet)
    summary = job.run()
    assert summary.complete and summary.read == len(state)
    assert calls[0] > -(-len(state) // TWO.batch)  # the failed batch was written again
    (part,) = partitions_of(sql_store, job.run_id)
    assert part.rows_read == len(state) and part.rows_applied == len(state)
    per_client: dict[str, int] = {}
    for row in state.values():
        per_client[row.client_id] = per_client.get(row.client_id, 0) + 1
    copied = {e.client: e.rows_copied for e in ledger.entries(sql_store, orders.name)}
    assert copied == per_client
    assert_state(sql_store, orders, state)


def test_a_pause_rolls_back_the_batch_that_reads_it(
    pg_store: SqlStore, orders: Entity, export_of: Export, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paused once the first batch committed, while the second was writing: the second
    reads the flag and rolls back, so exactly one batch is copied; resume copies the rest.
    (PostgreSQL: on SQLite the second batch's write lock would keep the pause out.)"""
    state = history_state(orders, clients=2, ids=40, seed=32)
    source = export_of(orders, docs_for(orders, state.values()))
    ledger.ensure_tables(pg_store)
    paused = threading.Event()
    real_apply = pg_store.apply
    calls = [0]

    def second_waits_for_the_pause(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 2:
            assert paused.wait(10)
        return real_apply(*args, **kwargs)

    def pause_after_the_first(_part: Any, _batch: Any) -> None:
        if not paused.is_set():
            control.set_paused(pg_store, orders.name, True)
            paused.set()

    monkeypatch.setattr(pg_store, "apply", second_waits_for_the_pause)
    job = Backfill(pg_store, source, orders, TWO, progress=quiet, on_batch=pause_after_the_first)
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(job.run()))
    thread.start()
    try:
        assert paused.wait(10)
        thread.join(1.0)
        assert thread.is_alive()  # waiting while paused
        (part,) = partitions_of(pg_store, job.run_id)
        assert part.rows_read == TWO.batch
        assert pg_store.count(orders, include_deleted=True) == TWO.batch
    finally:
        control.set_paused(pg_store, orders.name, False)
        thread.join(30)
    assert result and result[0].complete and result[0].read == len(state)
    assert_state(pg_store, orders, state)
