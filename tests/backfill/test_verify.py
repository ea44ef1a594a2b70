"""Verification against real stores: finds each kind of difference and only those.

Differences are injected on purpose, each in one key; values that only LOOK different
(another time zone for the same instant, NFD vs NFC unicode, a float within the
tolerance, JSON key order) must not be reported.
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Callable
from datetime import UTC, timedelta
from typing import Any

import pytest
from backfill_helpers import FAST, docs_for, history_state, quiet

from backfill import ledger
from backfill.runner import Backfill
from backfill.sources import ExportSource, RethinkSource
from backfill.verify import BAD, EXTRA, FIELDS, MISSING, VERSION, Verifier
from core.config import Entity
from stores.mapping import Row, document_from_row
from stores.rethink import RethinkStore
from stores.sql import SqlStore

Export = Callable[[Entity, list[dict[str, Any]]], ExportSource]
Live = Callable[[Entity, list[dict[str, Any]]], RethinkSource]


def _sql(store: SqlStore, statement: str, *params: Any) -> None:
    with store.transaction() as cur:
        cur.execute(statement.replace("<orders>", store.dialect.quote("orders")), list(params))


def _verifier(sql: SqlStore, old: Any, entity: Entity, delay: float = 0.05) -> Verifier:
    return Verifier(sql, old, entity, recheck_delay_s=delay, progress=quiet, page_size=37)


@pytest.fixture
def pair(sql_store: SqlStore, orders: Entity, live_of: Live) -> tuple[dict[str, Row], Any]:
    """A live old store and a SQL store that agree (filled by the backfill itself)."""
    state = history_state(orders, clients=3, ids=40, seed=21)
    old = live_of(orders, docs_for(orders, state.values()))
    assert Backfill(sql_store, old, orders, FAST, progress=quiet).run().complete
    return state, old


def test_a_clean_pair_verifies_clean_and_the_ledger_says_verified(
    sql_store: SqlStore, orders: Entity, pair: tuple[dict[str, Row], Any]
) -> None:
    state, old = pair
    report = _verifier(sql_store, old, orders).run()
    assert report.clean and report.differences == [] and report.rows_checked == len(state)
    assert {c: r.rows_checked for c, r in report.clients.items()} == {
        c: sum(r.client_id == c for r in state.values())
        for c in ("client-000", "client-001", "client-002")
    }
    entry = ledger.client_status(sql_store, "orders", "client-001")
    assert entry is not None and entry.state == "verified"
    assert entry.last_verification_clean is True and entry.differences == 0
    assert entry.verified_at is not None and entry.last_verification_mode == "full"
    sampled = _verifier(sql_store, old, orders).run(["client-002"], sample=10)
    assert sampled.clean and sampled.mode == "sample" and 0 < sampled.rows_checked <= 10


def _inject(
    sql: SqlStore, rethink: RethinkStore, entity: Entity, state: dict[str, Row]
) -> dict[str, str]:
    """One key per kind of difference; returns key -> expected kind."""
    live = sorted(k for k, r in state.items() if not r.deleted)
    dead = sorted(k for k, r in state.items() if r.deleted)
    q = sql.dialect.quote
    expected: dict[str, str] = {}
    # missing_in_new: the SQL row is gone.
    _sql(sql, f"DELETE FROM <orders> WHERE {q('id')} = ?", live[0])
    expected[live[0]] = MISSING
    # extra_in_new: live in SQL at a newer version while the old store has a tombstone.
    tomb = state[dead[0]]
    sql.apply(entity, [Row(tomb.key, tomb.client_id, tomb.version + 1, False, {"status": "back"})])
    expected[dead[0]] = EXTRA
    # extra_in_new: the old store deleted it (newer tombstone), SQL still has it live.
    gone = state[live[6]]
    rethink.insert_documents(
        entity,
        [document_from_row(entity, Row(gone.key, gone.client_id, gone.version + 1, True, {}))],
    )
    expected[live[6]] = EXTRA
    # extra_in_new: a key the old store never had.
    sql.apply(entity, [Row("zz-only-in-new", "client-001", 1, False, {"status": "new"})])
    expected["zz-only-in-new"] = EXTRA
    # version_mismatch: the old store moved on, SQL did not.
    moved = state[live[1]]
    doc = document_from_row(entity, moved)
    doc.update(version=moved.version + 1, status="shipped")
    rethink.insert_documents(entity, [doc])
    expected[live[1]] = VERSION
    # field_mismatch: same version, a value changed behind the store's back.
    _sql(sql, f"UPDATE <orders> SET {q('quantity')} = ? WHERE {q('id')} = ?", 123456789, live[2])
    expected[live[2]] = FIELDS
    # bad_in_old: a document the mapping rejects.
    rethink.insert_documents(
        entity, [{"id": "zz-bad", "client_id": "client-000", "version": "three"}]
    )
    expected["zz-bad"] = BAD
    # Look-alikes that are equal canonically: not differences.
    for key, change in ((live[3], "tz"), (live[4], "nfd"), (live[5], "float")):
        row = state[key]
        doc = document_from_row(entity, row)
        if change == "tz" and row.values.get("placed_at"):
            doc["placed_at"] = row.values["placed_at"].astimezone(timezone_plus_two()).isoformat()
        elif change == "nfd":
            doc["status"] = unicodedata.normalize("NFD", "café" + (row.values["status"] or ""))
            _sql(
                sql,
                f"UPDATE <orders> SET {q('status')} = ? WHERE {q('id')} = ?",
                unicodedata.normalize("NFC", doc["status"]),
                key,
            )
        elif change == "float" and row.values.get("amount") is not None:
            doc["amount"] = row.values["amount"] * (1 + 1e-13)
        rethink.insert_documents(entity, [doc])
    return expected


def timezone_plus_two() -> Any:
    from datetime import timezone

    return timezone(timedelta(hours=2))


def test_each_injected_kind_is_found_and_only_those(
    sql_store: SqlStore,
    orders: Entity,
    pair: tuple[dict[str, Row], Any],
    rethink_store: RethinkStore,
) -> None:
    state, old = pair
    expected = _inject(sql_store, rethink_store, orders, state)
    report = _verifier(sql_store, old, orders).run()
    found = {d.key: d.kind for d in report.differences}
    assert found == expected
    by_key = {d.key: d for d in report.differences}
    live = sorted(k for k, r in state.items() if not r.deleted)
    assert by_key[live[1]].fields == ["status"]
    assert by_key[live[2]].fields == ["quantity"]
    assert not report.clean
    # Every key appears in the human summary and in the JSON report: nothing truncated.
    text = "\n".join(report.summary_lines())
    assert all(key in text for key in expected)
    assert {d["key"] for d in report.to_json()["differences"]} == set(expected)
    entry = ledger.client_status(sql_store, "orders", "client-000")
    assert entry is not None and entry.last_verification_clean is False
    assert entry.state == "copied" and entry.differences and entry.differences > 0


def test_repair_fixes_what_the_version_rules_allow_then_reverifies(
    sql_store: SqlStore,
    orders: Entity,
    pair: tuple[dict[str, Row], Any],
    rethink_store: RethinkStore,
) -> None:
    """Repair copies from the old store through SqlStore.apply. Left alone: a key only the
    new store has (not deleted on a guess), a key where the new store is newer (the old
    store lags), and a bad old document (for a human)."""
    state, old = pair
    expected = _inject(sql_store, rethink_store, orders, state)
    report = _verifier(sql_store, old, orders).run(repair=True)
    outcome = {d.key: d.repaired for d in report.differences}
    assert set(outcome) == set(expected)
    newer_in_sql = sorted(k for k, r in state.items() if r.deleted)[0]
    left = {"zz-only-in-new", "zz-bad", newer_in_sql}
    assert {k for k, ok in outcome.items() if not ok} == left
    assert not report.clean
    # What is left is exactly the unrepairable keys; fix them by hand, then clean.
    again = _verifier(sql_store, old, orders).run()
    assert {d.key for d in again.differences} == left
    for key in ("zz-only-in-new", newer_in_sql):
        _sql(sql_store, f"DELETE FROM <orders> WHERE {sql_store.dialect.quote('id')} = ?", key)
    with rethink_store.connection() as conn:
        rethink_store.table(orders).get("zz-bad").delete().run(conn)
    assert _verifier(sql_store, old, orders).run().clean


def test_a_difference_in_flight_is_rechecked_not_reported(
    sql_store: SqlStore,
    orders: Entity,
    pair: tuple[dict[str, Row], Any],
    rethink_store: RethinkStore,
) -> None:
    """The double-write already has v+1; the legacy sink writes it to the old store a
    moment later. After the delay the key agrees: not a difference."""
    state, old = pair
    key = sorted(k for k, r in state.items() if not r.deleted)[7]
    row = state[key]
    newer = Row(key, row.client_id, row.version + 1, False, {**row.values, "status": "later"})
    sql_store.apply(orders, [newer])
    timer = threading.Timer(0.3, lambda: rethink_store.write(orders, [newer]))
    timer.start()
    report = _verifier(sql_store, old, orders, delay=1.5).run()
    timer.join()
    assert report.clean and report.rechecked >= 1
    # Still different after the delay: reported, and marked as re-checked.
    stuck = Row(key, row.client_id, row.version + 2, False, {**row.values, "status": "stuck"})
    sql_store.apply(orders, [stuck])
    report = _verifier(sql_store, old, orders, delay=0.05).run()
    (diff,) = report.differences
    assert diff.key == key and diff.kind == VERSION and diff.rechecked


def test_sample_and_per_client_modes_find_differences(
    sql_store: SqlStore,
    orders: Entity,
    pair: tuple[dict[str, Row], Any],
    rethink_store: RethinkStore,
) -> None:
    state, old = pair
    expected = _inject(sql_store, rethink_store, orders, state)
    everything = _verifier(sql_store, old, orders).run(sample=1000)  # N >= rows: all keys
    assert {d.key: d.kind for d in everything.differences} == expected
    one = _verifier(sql_store, old, orders).run(["client-001"])
    assert set(one.clients) == {"client-001"}
    assert {d.key for d in one.differences} == {
        k
        for k in expected
        if k == "zz-only-in-new" or state.get(k, Row(k, "?", 0)).client_id == "client-001"
    }


def test_a_key_whose_client_changed_is_one_field_mismatch(
    sql_store: SqlStore, orders: Entity, pair: tuple[dict[str, Row], Any]
) -> None:
    state, old = pair
    key = sorted(k for k, r in state.items() if not r.deleted and r.client_id == "client-000")[0]
    q = sql_store.dialect.quote
    _sql(
        sql_store,
        f"UPDATE <orders> SET {q('client_id')} = ? WHERE {q('id')} = ?",
        "client-002",
        key,
    )
    report = _verifier(sql_store, old, orders).run(["client-000", "client-002"])
    (diff,) = report.differences
    assert diff.key == key and diff.kind == FIELDS and diff.fields == ["client_id"]


def test_export_folder_as_the_old_side(
    sql_store: SqlStore, orders: Entity, export_of: Export
) -> None:
    state = history_state(orders, clients=2, ids=50, seed=31)
    source = export_of(orders, docs_for(orders, state.values()))
    assert Backfill(sql_store, source, orders, FAST, progress=quiet).run().complete
    assert _verifier(sql_store, source, orders).run().clean
    victim = sorted(k for k, r in state.items() if not r.deleted)[0]
    _sql(sql_store, f"DELETE FROM <orders> WHERE {sql_store.dialect.quote('id')} = ?", victim)
    report = _verifier(sql_store, source, orders).run(repair=True)
    assert [(d.key, d.kind, d.repaired) for d in report.differences] == [(victim, MISSING, True)]
    assert report.clean and _verifier(sql_store, source, orders).run().clean
    assert report.finished_at is not None and report.finished_at.tzinfo == UTC
