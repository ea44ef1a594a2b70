"""The rollout plan's rows and the read outcomes on every SQL dialect (SQLite and
PostgreSQL here, SQL Server when a DSN is given), and their T-SQL parsed offline."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
import sqlfluff

from core.clock import now_utc
from flags import rollout_state as state
from flags.evidence import (
    OUTCOME_COUNTERS,
    OutcomeBuffer,
    Outcomes,
    bucket_start,
    outcomes_per_client,
)
from flags.tables import OUTCOMES, ROLLOUT_EVENTS, ROLLOUT_PLANS
from stores.sql import SqlStore, Table, get_dialect
from stores.sql.schema import create_table_sql


def test_a_plan_row_lease_and_events_round_trip(sql_store: SqlStore) -> None:
    """Create, take the lease (one of two owners wins), write under it, lose it to a
    pause (the holder's next write matches nothing), resume, stop: each as recorded."""
    state.ensure(sql_store)
    entity = f"e_{uuid.uuid4().hex[:8]}"
    definition = {"waves": [10, 100], "pilot": ["a/b", "ü"], "bake_s": 1.5, "watch_s": 0.0}
    row = state.create(
        sql_store, entity, definition, {"shadow": 0, "new": 0}, "alice", replace_states=()
    )
    assert (row.state, row.wave, row.phase, row.definition) == ("planned", 0, "pending", definition)

    won = state.acquire(sql_store, entity, "host/1/a", ttl_s=30)
    with pytest.raises(state.LeaseHeld, match="host/1/a"):
        state.acquire(sql_store, entity, "host/2/b", ttl_s=30)
    at = now_utc()
    assert state.update_held(
        sql_store,
        won,
        "host/1/a",
        30,
        {"phase": "baking", "phase_at": at, "before": {"shadow": 0, "new": 0}, "guard": {"x": 1.5}},
        event=("shadowed", "cohort 10%", {"n": 3}),
        actor="alice",
    )
    got = state.load(sql_store, entity)
    assert got is not None and got.phase == "baking" and got.guard == {"x": 1.5}
    assert got.phase_at is not None and abs(got.phase_at - at) < timedelta(milliseconds=1)
    assert not state.update_held(sql_store, got, "host/2/b", 30, {"phase": "switching"})

    paused = state.set_state(
        sql_store, entity, "paused", "why", "bob", only_from=state.RUNNABLE, event="paused"
    )
    assert paused is not None and paused.state == "paused"
    assert not state.update_held(sql_store, got, "host/1/a", 30, {"phase": "switching"})
    with pytest.raises(state.RolloutError, match="paused"):
        state.acquire(sql_store, entity, "host/1/a", ttl_s=30)
    state.release(sql_store, entity, "host/1/a")
    assert state.set_state(
        sql_store, entity, "running", None, "bob", only_from=("paused",), event="resumed"
    )
    assert state.stop_for_kill(sql_store, entity, "carol", "incident")
    assert not state.stop_for_kill(sql_store, entity, "carol", "again")  # already ended
    final = state.load(sql_store, entity)
    assert final is not None and final.state == "stopped" and final.phase == "baking"
    events = [e["event"] for e in state.events(sql_store, entity, row.plan_id)]
    assert events == ["planned", "shadowed", "paused", "resumed", "stopped"]
    again = state.create(
        sql_store, entity, definition, {"shadow": 0, "new": 0}, "dan", replace_states=("stopped",)
    )
    assert again.plan_id != row.plan_id and again.state == "planned"


def test_two_runs_racing_for_one_lease_one_wins(sql_store: SqlStore, sql_dsn: tuple) -> None:
    """Two stores (two connections, as two processes) take the lease at one barrier."""
    state.ensure(sql_store)
    entity = f"e_{uuid.uuid4().hex[:8]}"
    state.create(sql_store, entity, {"waves": [100]}, {}, "t", replace_states=())
    others = [SqlStore(sql_dsn[1], sql_dsn[0], sql_store.config) for _ in range(4)]
    start = threading.Barrier(len(others))
    won: list[str] = []

    def take(store: SqlStore, owner: str) -> None:
        start.wait()
        try:
            state.acquire(store, entity, owner, ttl_s=30)
            won.append(owner)
        except state.LeaseHeld:
            pass

    threads = [threading.Thread(target=take, args=(s, f"h/{i}/x")) for i, s in enumerate(others)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for s in others:
        s.close()
    row = state.load(sql_store, entity)
    assert len(won) == 1 and row is not None and row.owner == won[0]


def test_read_outcomes_add_up_per_client_and_stage(sql_store: SqlStore) -> None:
    entity = f"e_{uuid.uuid4().hex[:8]}"
    buffer = OutcomeBuffer(sql_store)
    for status in (200, 200, 503, 500, 404):
        buffer.served(entity, "c/1", "new", status)
    buffer.served(entity, "c2", "shadow", 200)
    buffer.served(entity, "c3", "old", 503)  # not a stage a rollout moves through
    buffer.flush()
    buffer.served(entity, "c/1", "new", 502)
    buffer.stop()
    since = bucket_start(now_utc(), 3600)
    assert outcomes_per_client(sql_store, entity, since=since) == {
        "c/1": Outcomes(6, 3),
        "c2": Outcomes(1, 0),
    }
    assert outcomes_per_client(sql_store, entity, since=since, stages=["shadow"]) == {
        "c2": Outcomes(1, 0)
    }


@pytest.mark.parametrize("table", [OUTCOMES, ROLLOUT_PLANS, ROLLOUT_EVENTS])
def test_the_tables_tsql_parses(table: Table) -> None:
    tsql = get_dialect("mssql")
    statements = create_table_sql(tsql, table)
    if table is OUTCOMES:
        keys = [(n, OUTCOMES.col(n).kind) for n in OUTCOMES.primary_key]
        statements.append(
            tsql.increment_upsert(OUTCOMES.name, keys, list(OUTCOME_COUNTERS), stamp="updated_at")
        )
    for sql in statements:
        marks = iter(range(1, 100))
        named = "".join(f"@p{next(marks)}" if ch == "?" else ch for ch in sql)
        sqlfluff.parse(named + "\n", dialect="tsql")  # raises when unparsable
