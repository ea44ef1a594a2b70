"""Shadow evidence in the SQL store (flags.evidence), on SQLite and PostgreSQL.

Every count goes through the real increment-upsert of the store under test; several
buffers over separate store objects (separate connections: as separate API processes
would) and one real second process write the same rows. The data: comparison counts
per (entity, client, stage, hourly bucket), which must add up exactly, none lost or
doubled, whatever the interleaving of flushes, and survive the buffer that wrote them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections import Counter as Tally
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.clock import now_utc
from core.config import Config
from flags import evidence
from flags.evidence import (
    Counts,
    EvidenceBuffer,
    Key,
    ShadowPolicy,
    bucket_start,
    judge,
    per_client,
    shadow_verdict,
    window_start,
)
from flags.tables import EVIDENCE
from stores.sql import SqlStore, StatementCursors, bookkeeping

ROOT = Path(__file__).resolve().parents[2]
HOUR = 3600
NOW = datetime(2024, 5, 8, 12, 30, 15, tzinfo=UTC)
SLOW = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def stored(store: SqlStore, entity: str) -> dict[Key, Counts]:
    """Every row of an entity as the table holds it."""
    evidence.ensure_table(store)
    with store.transaction() as cur:
        rows = bookkeeping.select(cur, store.dialect, EVIDENCE, {"entity": entity})
    return {
        (r["entity"], r["client_id"], r["stage"], r["bucket_start"]): Counts(
            *(r[c] for c in evidence.COUNTERS)
        )
        for r in rows
    }


@pytest.fixture
def second_store(sql_dsn: tuple[str, str], config: Config) -> Iterator[SqlStore]:
    """Another store object on the same database: its own connections."""
    store = SqlStore(sql_dsn[1], sql_dsn[0], config)
    yield store
    store.close()


# -- increments add up --------------------------------------------------------------------
#: One step of one writer: count an outcome for (client, stage, hours ago), or flush.
step = st.one_of(
    st.tuples(
        st.sampled_from(["c-0", "c-1", "c-2"]),
        st.sampled_from(["shadow", "new"]),
        st.integers(0, 2),
        st.builds(
            Counts,
            comparisons=st.integers(0, 3),
            mismatches=st.integers(0, 2),
            mismatched_items=st.integers(0, 5),
            errors=st.integers(0, 1),
        ),
    ),
    st.just("flush"),
)


def run(buffer: EvidenceBuffer, entity: str, steps: list, start: threading.Barrier) -> None:
    start.wait()
    for s in steps:
        if s == "flush":
            buffer.flush()
        else:
            client, stage, hours, counts = s
            buffer.count(entity, client, stage, counts, at=NOW - timedelta(hours=hours))
    if not buffer.stop():  # the last counts, as at shutdown
        raise RuntimeError("the last flush failed")


def run_all(*writers: tuple[EvidenceBuffer, str, list]) -> None:
    """Each writer in a thread of its own, all starting at once; re-raises any failure."""
    start, failures = threading.Barrier(len(writers)), []

    def guarded(*args: object) -> None:
        try:
            run(*args, start)  # type: ignore[arg-type]
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=guarded, args=w) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures


def expected(entity: str, *writers: list) -> dict[Key, Counts]:
    total: dict[Key, Counts] = {}
    for steps in writers:
        for s in steps:
            if s == "flush":
                continue
            client, stage, hours, counts = s
            key = (entity, client, stage, bucket_start(NOW - timedelta(hours=hours), HOUR))
            total[key] = total.get(key, Counts()) + counts
    return {k: c for k, c in total.items() if c != Counts()}


@SLOW
@given(a=st.lists(step, max_size=25), b=st.lists(step, max_size=25), later=st.lists(step))
def test_two_writers_flushing_in_any_interleaving_lose_no_increment(
    sql_store: SqlStore,
    second_store: SqlStore,
    sql_dsn: tuple[str, str],
    config: Config,
    a: list,
    b: list,
    later: list,
) -> None:
    """Two buffers over separate connections flush concurrently (threads started at one
    barrier, flushes wherever hypothesis puts them); then a third, as after a restart,
    adds more. The table holds exactly the sum of everything counted."""
    entity = f"e-{uuid.uuid4().hex[:8]}"
    run_all((EvidenceBuffer(sql_store), entity, a), (EvidenceBuffer(second_store), entity, b))
    assert stored(sql_store, entity) == expected(entity, a, b)

    restarted = SqlStore(sql_dsn[1], sql_dsn[0], config)
    try:
        run_all((EvidenceBuffer(restarted), entity, later))
    finally:
        restarted.close()
    assert stored(sql_store, entity) == expected(entity, a, b, later)


def test_a_failed_flush_keeps_its_counts_for_the_next(tmp_path: Path, config: Config) -> None:
    """The store cannot be opened at the first flush (its folder does not exist yet): the
    counts stay in memory, with those counted meanwhile, and the next flush, once the
    store can be opened, writes all of them."""
    entity = f"e-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "later"
    store = SqlStore(f"DRIVER={{SQLite3}};Database={folder / 'cutover.db'}", "sqlite", config)
    buffer = EvidenceBuffer(store)
    buffer.count(entity, "c-0", "shadow", Counts(comparisons=2, mismatches=1), at=NOW)
    with pytest.raises(Exception):  # noqa: B017 - whatever the driver says, nothing is lost
        buffer.flush()
    buffer.count(entity, "c-0", "shadow", Counts(comparisons=1), at=NOW)
    assert sum(c.comparisons for c in buffer.pending().values()) == 3
    folder.mkdir()
    assert buffer.flush() == 1
    assert buffer.pending() == {}
    key = (entity, "c-0", "shadow", bucket_start(NOW, HOUR))
    assert stored(store, entity) == {key: Counts(comparisons=3, mismatches=1)}
    store.close()


CHILD = """
import sys
from datetime import UTC, datetime
from core.config import load_config
from flags.evidence import Counts, EvidenceBuffer
from stores.sql import SqlStore
dsn, dialect, entity, n = sys.argv[1:5]
store = SqlStore(dsn, dialect, load_config("cutover.toml"))
buffer = EvidenceBuffer(store, flush_s=0.01)
buffer.start()
at = datetime.fromisoformat(sys.argv[5])
for i in range(int(n)):
    buffer.count(entity, "c-%d" % (i % 3), "shadow", Counts(comparisons=1, mismatches=i % 2), at=at)
assert buffer.stop()
"""


def test_another_process_adds_to_the_same_rows(
    sql_store: SqlStore, sql_dsn: tuple[str, str]
) -> None:
    """A real second process, flushing every 10 ms (and pruning: hence the current
    time), and this one count the same clients at the same time: the sums are both
    processes' counts."""
    entity = f"e-{uuid.uuid4().hex[:8]}"
    dialect, dsn = sql_dsn
    now = now_utc()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, dsn, dialect, entity, "3000", now.isoformat()],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    mine = EvidenceBuffer(sql_store)
    for i in range(300):
        mine.count(entity, f"c-{i % 3}", "shadow", Counts(comparisons=1), at=now)
        if i % 30 == 0:
            mine.flush()
    assert mine.stop()
    assert child.wait(60) == 0
    found = per_client(sql_store, entity, since=bucket_start(now, HOUR))
    assert found == {
        f"c-{c}": Counts(comparisons=1000 + 100, mismatches=sum(i % 2 for i in range(c, 3000, 3)))
        for c in range(3)
    }


# -- windows --------------------------------------------------------------------------------
@SLOW
@given(
    ages=st.lists(st.integers(0, 10 * 86400), min_size=1, max_size=30),
    window_s=st.integers(60, 8 * 86400),
)
def test_a_window_sums_whole_buckets_from_the_one_holding_its_start(
    sql_store: SqlStore, ages: list[int], window_s: int
) -> None:
    """One comparison counted ``age`` seconds before NOW, for each age: a window of W
    counts every one at most W old, none older than W plus one bucket, and exactly those
    whose bucket starts at or after the window's first bucket."""
    entity = f"e-{uuid.uuid4().hex[:8]}"
    buffer = EvidenceBuffer(sql_store)
    for age in ages:
        buffer.count(
            entity, "c-0", "shadow", Counts(comparisons=1), at=NOW - timedelta(seconds=age)
        )
    buffer.flush()
    since = window_start(NOW, window_s, HOUR)
    got = per_client(sql_store, entity, since=since).get("c-0", Counts()).comparisons
    inside = [a for a in ages if bucket_start(NOW - timedelta(seconds=a), HOUR) >= since]
    assert got == len(inside)
    assert len([a for a in ages if a <= window_s]) <= got
    assert got <= len([a for a in ages if a < window_s + HOUR])
    assert evidence.totals(sql_store, entity, since=since).comparisons == got


def test_pruning_deletes_only_buckets_before_the_cut(sql_store: SqlStore) -> None:
    entity = f"e-{uuid.uuid4().hex[:8]}"
    buffer = EvidenceBuffer(sql_store)
    for days in (0, 3, 20, 30):
        buffer.count(entity, "c-0", "shadow", Counts(comparisons=1), at=NOW - timedelta(days=days))
    buffer.flush()
    assert evidence.prune(sql_store, before=bucket_start(NOW - timedelta(days=14), HOUR)) >= 2
    left = sorted(k[3] for k in stored(sql_store, entity))
    assert left == [bucket_start(NOW - timedelta(days=d), HOUR) for d in (3, 0)]


# -- the verdict ----------------------------------------------------------------------------
@given(
    n=st.integers(0, 10_000),
    m=st.integers(0, 10_000),
    min_comparisons=st.integers(0, 1000),
    max_rate=st.floats(0, 1),
)
def test_judge_passes_enough_comparisons_at_a_low_enough_rate(
    n: int, m: int, min_comparisons: int, max_rate: float
) -> None:
    m = min(m, n)
    policy = ShadowPolicy(min_comparisons=min_comparisons, max_mismatch_rate=max_rate)
    verdict = judge("orders", "acme", Counts(comparisons=n, mismatches=m), policy, since=NOW)
    assert verdict.ok == (n >= min_comparisons and (n == 0 or m / n <= max_rate))
    assert verdict.ok or ("'acme' (orders)" in verdict.reason)  # a refusal names whom
    if n and m / n > max_rate:  # mismatches are named before a shortage of comparisons
        assert verdict.reason.startswith("shadow mismatch rate")
    assert (verdict.comparisons, verdict.mismatches) == (n, m)


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement the store executes from here on (the real cursor runs it), but
    SQLite's explicit BEGIN IMMEDIATE / COMMIT, which the other dialects do not send."""
    seen: list[str] = []
    real = StatementCursors.execute

    def execute(self: StatementCursors, sql: str, *params: object) -> object:
        if sql not in ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK"):
            seen.append(sql)
        return real(self, sql, *params)

    monkeypatch.setattr(StatementCursors, "execute", execute)
    return seen


def test_the_verdict_for_10000_clients_takes_one_query(
    sql_store: SqlStore, statements: list[str]
) -> None:
    """10,000 clients with evidence in the window, some old evidence outside it, and ids
    never compared: each verdict is the policy applied to that client's own sums, read
    by one grouped query; a few ids go through one query too."""
    entity = f"e-{uuid.uuid4().hex[:8]}"
    policy = ShadowPolicy(min_comparisons=100, max_mismatch_rate=0.01, window_s=7 * 86400)
    buffer = EvidenceBuffer(sql_store)
    want: Tally[str] = Tally()
    bad: Tally[str] = Tally()
    clients = [f"client-{i:05d}" for i in range(10_000)]
    for i, client in enumerate(clients):
        comparisons = i % 250
        mismatches = min(comparisons, (i // 250) % 3)
        buffer.count(entity, client, "shadow", Counts(comparisons, mismatches), at=NOW)
        buffer.count(entity, client, "new", Counts(comparisons=1), at=NOW - timedelta(hours=1))
        buffer.count(entity, client, "shadow", Counts(1000, 1000), at=NOW - timedelta(days=9))
        want[client], bad[client] = comparisons + 1, mismatches
    buffer.flush()
    asked = [*clients, "never-compared-1", "never-compared-2"]

    statements.clear()
    verdicts = shadow_verdict(sql_store, entity, asked, policy=policy, now=NOW)
    assert len(statements) == 1 and "GROUP BY" in statements[0]
    since = policy.since(NOW)
    assert verdicts == {
        c: judge(entity, c, Counts(want[c], bad[c]) if want[c] else Counts(), policy, since=since)
        for c in asked
    }
    passing = sum(v.ok for v in verdicts.values())
    assert 0 < passing < len(clients)  # both kinds of verdict are exercised

    statements.clear()
    few = shadow_verdict(sql_store, entity, clients[:3], policy=policy, now=NOW)
    assert len(statements) == 1
    assert few == {c: verdicts[c] for c in clients[:3]}


# -- the command ------------------------------------------------------------------------------
@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: Config) -> SqlStore:
    """``cutover`` as an operator runs it: settings from the environment only (a SQLite
    store in a state dir of its own); returns that store, to write evidence into."""
    monkeypatch.chdir(tmp_path)  # no .env / services.env of the checkout
    monkeypatch.setenv("CUTOVER_CONFIG_FILE", str(ROOT / "cutover.toml"))
    monkeypatch.setenv("CUTOVER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CUTOVER_GATE_MIN_SHADOW_COMPARISONS", "10")
    from core.settings import Settings

    return SqlStore.from_settings(Settings(), config)


def test_the_evidence_command_lists_clients_blocked_first(cli_env: SqlStore) -> None:
    import json

    from click.testing import CliRunner

    from flags.evidence_cli import evidence as command

    buffer = EvidenceBuffer(cli_env)
    now = now_utc()
    buffer.count("orders", "acme", "shadow", Counts(comparisons=40), at=now)
    buffer.count("orders", "zeta", "shadow", Counts(comparisons=40, mismatches=4), at=now)
    buffer.count("orders", "small", "new", Counts(comparisons=3), at=now)
    buffer.count("customers", "acme", "shadow", Counts(comparisons=99), at=now)
    buffer.flush()
    runner = CliRunner()

    text = runner.invoke(command, ["orders"])
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert "4 of 83 comparisons" in lines[1] and "3 client(s), 2 short of the gate" in lines[2]
    listed = [line.split()[0] for line in lines[4:]]
    assert listed == ["small", "zeta", "acme"]  # blocked first, then by id
    assert "SHORT: only 3 shadow comparisons" in lines[4] and lines[6].endswith("ok")

    one = runner.invoke(command, ["orders", "--client", "nobody", "--json"])
    assert one.exit_code == 0, one.output
    (row,) = json.loads(one.output)["clients"]
    assert (row["client"], row["comparisons"], row["ok"]) == ("nobody", 0, False)

    limited = runner.invoke(command, ["orders", "--limit", "1"])
    assert "... and 2 more" in limited.output

    unknown = runner.invoke(command, ["nope"])
    assert unknown.exit_code != 0 and "unknown entity 'nope'" in str(unknown.exception)
    assert runner.invoke(command, ["orders", "--window", "5"]).exit_code == 2
    cli_env.close()
