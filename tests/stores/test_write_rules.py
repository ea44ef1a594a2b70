"""The one write path: any order and duplication of events gives the reference state.

Runs on PostgreSQL and SQLite through pyodbc (the ``sql_store`` fixture is
parametrised), with hypothesis generating the histories and their delivery order.
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from core.config import Config
from core.events import Event
from cutover.synthetic import generate_history, reference, with_faults
from stores.mapping import Row, row_from_event
from stores.sql import SqlStore, entity_table

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _reset(store: SqlStore, config: Config) -> None:
    table = entity_table(config.entity("orders"))
    with store.transaction() as cur:
        cur.execute(f"DELETE FROM {store.dialect.quote(table.name)}")


def _state(store: SqlStore, config: Config) -> dict[str, Row]:
    return {row.key: row for row in store.scan(config.entity("orders"), None, page_size=97)}


@st.composite
def histories(draw: st.DrawFn) -> list[Event]:
    """Events for a few ids, each id's versions 1..n, some ending (or not) in a delete."""
    events = []
    for i in range(draw(st.integers(1, 6))):
        n = draw(st.integers(1, 4))
        for v in range(1, n + 1):
            op = draw(st.sampled_from(["upsert", "upsert", "delete"]))
            events.append(
                Event(
                    event_id=f"e{i}-{v}",
                    entity="orders",
                    op=op,
                    id=f"k{i}",
                    client_id=f"c{i % 2}",
                    version=v,
                    occurred_at=T0 + timedelta(seconds=v),
                    data={} if op == "delete" else {"status": f"s{v}", "quantity": v * 2**40},
                )
            )
    return events


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=histories(), data=st.data())
def test_any_order_and_duplication_gives_reference_state(
    sql_store: SqlStore, config: Config, events: list[Event], data: st.DataObject
) -> None:
    _reset(sql_store, config)
    orders = config.entity("orders")
    delivered = data.draw(st.permutations(events + data.draw(st.lists(st.sampled_from(events)))))
    batch_size = data.draw(st.integers(1, 5))
    for start in range(0, len(delivered), batch_size):
        chunk = [row_from_event(orders, e) for e in delivered[start : start + batch_size]]
        sql_store.apply(orders, chunk)
    assert _state(sql_store, config) == reference(orders, events)


def test_bulk_history_with_faults_matches_reference(sql_store: SqlStore, config: Config) -> None:
    """Thousands of rows in big batches exercise the per-statement parameter limits."""
    orders = config.entity("orders")
    events = generate_history(orders, clients=4, ids_per_client=400, versions=3, seed=7)
    delivered = with_faults(events, duplicate_rate=0.2, seed=7)
    rows = [row_from_event(orders, e) for e in delivered]
    total = None
    for start in range(0, len(rows), 2500):
        result = sql_store.apply(orders, rows[start : start + 2500])
        total = result if total is None else total + result
    assert total is not None and total.applied + total.stale == len(rows)
    expected = reference(orders, events)
    assert _state(sql_store, config) == expected
    live = sum(1 for r in expected.values() if not r.deleted)
    assert sql_store.count(orders) == live
    assert sql_store.count(orders, include_deleted=True) == len(expected)


def test_tombstone_blocks_older_and_equal_upserts(sql_store: SqlStore, config: Config) -> None:
    orders = config.entity("orders")
    values = {c.name: None for c in orders.columns} | {"status": "paid"}
    sql_store.apply(orders, [Row("k", "c", 5, True, {})])
    assert sql_store.apply(orders, [Row("k", "c", 5, False, values)]).applied == 0
    assert sql_store.apply(orders, [Row("k", "c", 4, False, values)]).applied == 0
    assert sql_store.page(orders, "c") == []  # reads exclude tombstones
    stored = sql_store.get(orders, "k")
    assert stored is not None and stored.deleted and stored.version == 5
    assert sql_store.apply(orders, [Row("k", "c", 6, False, values)]).applied == 1
    assert [r.values["status"] for r in sql_store.page(orders, "c")] == ["paid"]


def test_keyset_paging_sees_every_row_once_in_order(sql_store: SqlStore, config: Config) -> None:
    orders = config.entity("orders")
    keys = [f"k{i:04d}" for i in range(250)] + ["K-upper", "a b", "ü-unicode", "~tilde"]
    sql_store.apply(orders, [Row(k, "c1", 1, False, {}) for k in keys])
    seen = [r.key for r in sql_store.scan(orders, "c1", page_size=16)]
    assert seen == sorted(keys)  # binary (code point) order, like RethinkDB


def test_a_store_that_is_down_is_a_clear_error(config: Config) -> None:
    """Nothing is written and the caller gets StoreUnavailable (retry later), no DSN leak."""
    from stores.sql import StoreUnavailable

    dsn = "DRIVER={PostgreSQL Unicode};SERVER=127.0.0.1;PORT=1;DATABASE=x;UID=u;PWD=hunter2;"
    store = SqlStore(dsn, "postgresql", config, login_timeout_s=2)
    with pytest.raises(StoreUnavailable) as info:
        store.apply(config.entity("orders"), [Row("k", "c", 1, False, {})])
    assert "hunter2" not in str(info.value)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)


@st.composite
def _column_values(draw: st.DrawFn) -> dict[str, object]:
    """Values at the edges of every column type, each column possibly null."""
    values = {
        # quotes, backslashes, controls, astral planes; not NUL, which PostgreSQL's text
        # cannot hold (the batch fails with SQLSTATE 22P05), nor lone surrogates
        "status": st.text(
            st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=32
        ),
        # below the largest double, which SQLite's 15 digits round up to infinity
        "amount": st.floats(-1e308, 1e308, allow_nan=False, allow_infinity=False),
        "quantity": st.integers(-(2**63), 2**63 - 1),
        "paid": st.booleans(),
        "placed_at": st.datetimes(
            min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
        ),
        "meta": _JSON_VALUES,
    }
    return {name: draw(st.none() | strategy) for name, strategy in values.items()}


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(_column_values(), min_size=1, max_size=5))
def test_every_value_survives_the_batch_exactly(
    sql_store: SqlStore, config: Config, rows: list[dict[str, object]]
) -> None:
    """The batch travels as JSON text and is cast by the server per column: nothing may
    change on the way (float digits, 64-bit integers, microseconds, escapes in text)."""
    if sql_store.dialect.name == "sqlite":
        # sqliteodbc's UTF-16 conversion breaks on planes 16 and up (U+100000..)
        assume(max(map(ord, json.dumps(rows, default=str, ensure_ascii=False))) < 0x100000)
    _reset(sql_store, config)
    orders = config.entity("orders")
    written = [Row(f"k{i}", "c", 1, False, values) for i, values in enumerate(rows)]
    sql_store.apply(orders, written)
    stored = _state(sql_store, config)
    if sql_store.dialect.name == "sqlite":
        # The SQLite stand-in keeps ~15 significant digits of a float: SQLite 3.40's
        # JSON number parser is not correctly rounded, and sqliteodbc reads a REAL
        # through 15-digit text. PostgreSQL and SQL Server must be exact.
        for row in written:
            sent, got = row.values["amount"], stored[row.key].values["amount"]
            assert (sent is None and got is None) or math.isclose(sent, got, rel_tol=1e-14)
        stored = {k: _without_amount(r) for k, r in stored.items()}
        written = [_without_amount(r) for r in written]
    assert stored == {row.key: row for row in written}


def _without_amount(row: Row) -> Row:
    return Row(row.key, row.client_id, row.version, row.deleted, {**row.values, "amount": 0})


def test_each_write_stamps_its_rows_with_the_write_time(
    sql_store: SqlStore, config: Config
) -> None:
    """``_updated_at`` (bound once per statement, not carried per row) is the time of the
    write that last changed the row, in UTC; a stale write leaves it alone."""
    orders = config.entity("orders")
    q = sql_store.dialect.quote

    def stamp() -> datetime:
        with sql_store.transaction() as cur:
            sql = f"SELECT {q('_updated_at')} FROM {q('orders')} WHERE {q('id')} = ?"
            value = cur.execute(sql, "k").fetchone()[0]
        return sql_store.dialect.from_db("datetime", value)

    _reset(sql_store, config)
    before = datetime.now(UTC)
    sql_store.apply(orders, [Row("k", "c", 2, False, {"status": "a"})])
    first = stamp()
    assert before - timedelta(seconds=1) <= first <= datetime.now(UTC) + timedelta(seconds=1)
    sql_store.apply(orders, [Row("k", "c", 1, False, {"status": "old"})])  # stale
    assert stamp() == first
    time.sleep(0.01)
    sql_store.apply(orders, [Row("k", "c", 3, False, {"status": "b"})])
    assert stamp() > first
