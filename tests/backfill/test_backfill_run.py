"""The backfill against real stores: copies, version rules, bad documents, ledger.

Every test ends by comparing the SQL store with the reference model of the history
(the newest version of every id wins; deleted ids stay deleted).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from backfill_helpers import FAST, assert_state, docs_for, history_state, quiet

from backfill import ledger
from backfill.runner import Backfill
from backfill.sources import ExportSource, RethinkSource
from core.config import Config, Entity
from stores.mapping import Row
from stores.sql import SqlStore, StoreAuthFailed

Export = Callable[[Entity, list[dict[str, Any]]], ExportSource]
Live = Callable[[Entity, list[dict[str, Any]]], RethinkSource]


def test_export_backfill_copies_everything(
    sql_store: SqlStore, orders: Entity, export_of: Export
) -> None:
    state = history_state(orders, clients=3, ids=60)
    source = export_of(orders, docs_for(orders, state.values()))
    summary = Backfill(sql_store, source, orders, FAST, progress=quiet).run()
    assert summary.complete and not summary.bad
    assert summary.read == len(state) == summary.applied
    assert_state(sql_store, orders, state)
    # Tombstones are copied too: a deleted id is present as a tombstone, not absent.
    deleted = [k for k, r in state.items() if r.deleted]
    assert deleted and all(r.deleted for r in sql_store.get_many(orders, deleted))
    entries = {e.client: e for e in ledger.entries(sql_store, "orders")}
    assert set(entries) == {"client-000", "client-001", "client-002"}
    for client, entry in entries.items():
        assert entry.state == "copied"
        assert entry.rows_copied == sum(r.client_id == client for r in state.values())
        assert entry.copied_at is not None and entry.copy_seconds is not None
    # The same command again: the run is complete, nothing is copied twice.
    again = Backfill(sql_store, source, orders, FAST, progress=quiet).run()
    assert again.already_complete and again.session_rows == 0


def test_live_backfill_per_client(pg_store: SqlStore, orders: Entity, live_of: Live) -> None:
    state = history_state(orders, clients=3, ids=50, seed=4)
    source = live_of(orders, docs_for(orders, state.values()))
    options = replace(FAST, clients=("client-001",))
    summary = Backfill(pg_store, source, orders, options, progress=quiet).run()
    assert summary.complete and summary.partitions == 1
    only = {k: r for k, r in state.items() if r.client_id == "client-001"}
    assert_state(pg_store, orders, only)
    assert ledger.client_status(pg_store, "orders", "client-001").state == "copied"  # type: ignore[union-attr]
    assert ledger.client_status(pg_store, "orders", "client-000") is None
    # Now all clients, several workers: the rest arrives, client-001 is rewritten as stale.
    everyone = Backfill(pg_store, source, orders, replace(FAST, workers=3), progress=quiet).run()
    assert everyone.complete and everyone.partitions == 3
    assert_state(pg_store, orders, state)
    assert everyone.stale == len(only)


def test_backfill_never_overwrites_newer_rows_or_resurrects_deletes(
    sql_store: SqlStore, orders: Entity, export_of: Export
) -> None:
    """The double-write got there first: newer versions and deletes in SQL must win."""
    state = history_state(orders, clients=2, ids=40, seed=9, delete_rate=0.0)
    keys = sorted(state)
    newer = {
        k: Row(
            k,
            state[k].client_id,
            state[k].version + 5,
            False,
            dict(state[k].values, status="NEWER"),
        )
        for k in keys[:10]
    }
    deleted = {k: Row(k, state[k].client_id, state[k].version, True, {}) for k in keys[10:20]}
    sql_store.apply(orders, [*newer.values(), *deleted.values()])
    source = export_of(orders, docs_for(orders, state.values()))
    summary = Backfill(sql_store, source, orders, FAST, progress=quiet).run()
    assert summary.stale == 20 and summary.applied == len(state) - 20
    assert_state(sql_store, orders, {**state, **newer, **deleted})


def test_bad_documents_are_counted_and_reported_by_key(
    sql_store: SqlStore, orders: Entity, export_of: Export
) -> None:
    """Bad documents are not copied, and not dropped silently either: each one is in the
    summary and in backfill_bad_docs with its key (or its byte offset when it has no key),
    and the good documents around them are all copied."""
    state = history_state(orders, clients=2, ids=30, seed=2, delete_rate=0.0)
    docs = docs_for(orders, state.values())
    docs[3:3] = [
        {"client_id": "client-000", "version": 1, "status": "no key"},
        {"id": "bad-type", "client_id": "client-000", "version": 1, "quantity": "seven"},
        {"id": "bad-version", "client_id": "client-001", "status": "x"},
        {"id": "bad-client", "version": 2},
        # a raw TIME without its epoch: the mapping names the field, the run goes on
        {
            "id": "bad-time",
            "client_id": "client-001",
            "version": 1,
            "placed_at": {"$reql_type$": "TIME"},
        },
    ]
    docs.append(["not", "an", "object"])  # type: ignore[arg-type]
    summary = Backfill(sql_store, export_of(orders, docs), orders, FAST, progress=quiet).run()
    assert summary.complete
    refs = {b.ref: b for b in summary.bad}
    assert {"key:bad-type", "key:bad-version", "key:bad-client", "key:bad-time"} <= set(refs)
    assert "quantity" in refs["key:bad-type"].error
    assert "placed_at" in refs["key:bad-time"].error
    assert "version" in refs["key:bad-version"].error
    offsets = [r for r in refs if r.startswith("at:orders.json@")]
    assert len(offsets) == 2 and len(summary.bad) == 6
    assert summary.read == len(state) + 6
    assert_state(sql_store, orders, state)
    assert sql_store.get_many(orders, ["bad-type", "bad-version", "bad-client"]) == []
    assert any("bad documents" in line for line in summary.lines())


def test_live_sweep_reports_documents_without_a_usable_client(
    pg_store: SqlStore, orders: Entity, live_of: Live
) -> None:
    state = history_state(orders, clients=2, ids=20, seed=5, delete_rate=0.0)
    docs = docs_for(orders, state.values())
    docs.append({"id": "numeric-client", "client_id": 17, "version": 1})
    docs.append({"id": "wrong-amount", "client_id": "client-000", "version": 1, "amount": "12.5"})
    summary = Backfill(pg_store, live_of(orders, docs), orders, FAST, progress=quiet).run()
    assert summary.complete
    assert sorted(b.ref for b in summary.bad) == ["key:numeric-client", "key:wrong-amount"]
    assert_state(pg_store, orders, state)


def test_dry_run_writes_nothing(sql_store: SqlStore, orders: Entity, export_of: Export) -> None:
    state = history_state(orders, clients=2, ids=20)
    docs = [*docs_for(orders, state.values()), {"id": "bad", "client_id": "c", "version": -1}]
    summary = Backfill(sql_store, export_of(orders, docs), orders, FAST, progress=quiet).dry_run()
    assert summary.dry_run and summary.complete
    assert summary.read == len(state) + 1 and [b.ref for b in summary.bad] == ["key:bad"]
    assert sql_store.count(orders, include_deleted=True) == 0


def test_a_refused_login_fails_the_run_at_once_without_the_secret(
    postgres_dsn: str, config: Config, orders: Entity, export_of: Export
) -> None:
    """A wrong user (the test cluster trusts every known user): the run fails with the
    store's authentication error after no retries, and copies nothing."""
    import re
    import time

    secret = "not-the-password-77a1"
    wrong = re.sub(r"UID=[^;]*;PWD=[^;]*;", f"UID=nobody_3;PWD={secret};", postgres_dsn)
    store = SqlStore(wrong, "postgresql", config)
    state = history_state(orders, clients=1, ids=5)
    source = export_of(orders, docs_for(orders, state.values()))
    started = time.monotonic()
    with pytest.raises(StoreAuthFailed) as refused:
        Backfill(store, source, orders, replace(FAST, retry_base_s=5.0), progress=quiet).run()
    assert time.monotonic() - started < 5.0  # not one backoff of 5 s
    assert secret not in str(refused.value) and "nobody_3" not in str(refused.value)
    store.close()
