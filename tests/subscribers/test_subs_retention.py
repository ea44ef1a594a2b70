"""Failure-log retention: the purge deletes exactly the entries past retention.

Hypothesis generates failure logs (entries of every status and age, on declared and
undeclared subscriptions, ages landing exactly on the cutoffs too) and retention
settings; the purge runs on SQLite and PostgreSQL (``sql_store``). Against a model of
the rules: a dry run changes nothing and selects exactly what the real run then
deletes; no open entry goes without ``include_open``; the entries left are exactly
the others, bodies and all.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import insert_failures

from core.config import Config
from core.settings import Settings
from cutover.cli import cli
from cutover.services import ServiceInfo
from stores.runtime import Runtime
from stores.sql import SqlStore, bookkeeping
from subscribers import audit, retention
from subscribers.tables import FAILURES, TABLES

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
DAY = 86_400
DECLARED = ["orders-rethinkdb", "orders-sqlstore", "customers-rethinkdb", "customers-sqlstore"]
SUBSCRIPTIONS = [*DECLARED, "dropped-sub"]  # the last one is in no config


@pytest.fixture
def store(sql_store: SqlStore) -> SqlStore:
    sql_store.ensure_schema(TABLES)
    return sql_store


def _ago(seconds: int) -> datetime:
    return NOW - timedelta(seconds=seconds)


#: Retention days the strategies favour, so that ages land on, just before and just
#: after a cutoff: an entry exactly at its cutoff is not past it.
CUTS = [1, 7, 30, 60]
ages = st.integers(0, 90 * DAY) | st.tuples(st.sampled_from(CUTS), st.sampled_from([-1, 0, 1])).map(
    lambda t: t[0] * DAY + t[1]
)


@st.composite
def entries(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A failure log: each entry first seen, last seen, maybe replayed (a reopened one
    is open again with its old resolved_at kept, as the handler leaves it)."""
    log = []
    for i in range(draw(st.integers(0, 25))):
        last = draw(ages)
        first = last + draw(st.integers(0, 5 * DAY))
        replayed_after = draw(st.none() | st.integers(0, 10 * DAY))
        resolved = None if replayed_after is None else max(0, last - replayed_after)
        status = draw(st.sampled_from(["open", "replayed"]))
        log.append(
            {
                "subscription": draw(st.sampled_from(SUBSCRIPTIONS)),
                "message_id": f"m{i:03d}",
                "status": status,
                "first_seen": _ago(first),
                "last_seen": _ago(last),
                "resolved_at": None if resolved is None else _ago(resolved),
            }
        )
    return log


retention_days = st.integers(0, 60) | st.sampled_from([0, *CUTS])


def _with_retention(config: Config, days: dict[str, tuple[int, int]]) -> Config:
    subs = {
        name: sub.model_copy(
            update={
                "failure_retention_days_replayed": days[name][0],
                "failure_retention_days_open": days[name][1],
            }
        )
        for name, sub in config.subscriptions.items()
    }
    return config.model_copy(update={"subscriptions": subs})


def _expected(
    log: list[dict[str, Any]],
    cfg: Config,
    names: list[str] | None,
    include_open: bool,
    older_than: int | None,
) -> list[dict[str, Any]]:
    """The model: which entries a purge at NOW deletes."""
    chosen = []
    for e in log:
        sub = cfg.subscriptions.get(e["subscription"])
        if sub is None or (names and sub.name not in names):
            continue
        if e["status"] == "open":
            days, moment = sub.failure_retention_days_open, e["last_seen"]
            if not include_open:
                continue
        else:
            days, moment = sub.failure_retention_days_replayed, e["resolved_at"] or e["last_seen"]
        days = older_than or days
        if days and moment < NOW - timedelta(days=days):
            chosen.append(e)
    return chosen


def _stored(store: SqlStore) -> dict[str, dict[str, Any]]:
    with store.transaction() as cur:
        rows = bookkeeping.select(cur, store.dialect, FAILURES, {})
    return {r["message_id"]: r for r in rows}


def _counts(report: retention.PurgeReport, deleted: bool) -> dict[tuple[str, str], int]:
    out = {}
    for part in report.subscriptions:
        for status, n in ((part.deleted or {}) if deleted else part.selected).items():
            if n:
                out[(part.subscription, status)] = n
    return out


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    log=entries(),
    days=st.fixed_dictionaries({n: st.tuples(retention_days, retention_days) for n in DECLARED}),
    names=st.none() | st.sampled_from(DECLARED).map(lambda n: [n]),
    include_open=st.booleans(),
    older_than=st.none() | st.sampled_from(CUTS) | st.integers(1, 60),
    batch=st.sampled_from([1, 3, 1000]),
)
def test_purge_deletes_exactly_the_entries_past_retention(
    store: SqlStore,
    config: Config,
    log: list[dict[str, Any]],
    days: dict[str, tuple[int, int]],
    names: list[str] | None,
    include_open: bool,
    older_than: int | None,
    batch: int,
) -> None:
    with store.transaction() as cur:
        cur.execute(f"DELETE FROM {store.dialect.quote(FAILURES.name)}")
    insert_failures(store, log)
    cfg = _with_retention(config, days)
    before = _stored(store)
    expected = _expected(log, cfg, names, include_open, older_than)
    want = {}
    for e in expected:
        want[(e["subscription"], e["status"])] = want.get((e["subscription"], e["status"]), 0) + 1

    plan = retention.plan(
        cfg, names, now=NOW, include_open=include_open, older_than_days=older_than
    )
    dry = retention.purge(store, plan, dry_run=True, batch=batch)
    assert _stored(store) == before, "a dry run deleted something"
    assert _counts(dry, deleted=False) == want

    real = retention.purge(store, plan, batch=batch)
    assert _counts(real, deleted=True) == _counts(dry, deleted=False) == want
    gone = {e["message_id"] for e in expected}
    assert _stored(store) == {k: v for k, v in before.items() if k not in gone}
    if not include_open:
        assert all(e["status"] == "replayed" for e in expected)

    for part in dry.subscriptions:  # the oldest selected entry, and the same in both runs
        mine = [e for e in expected if e["subscription"] == part.subscription]
        moments = [
            (e["last_seen"] if e["status"] == "open" else e["resolved_at"] or e["last_seen"], e)
            for e in mine
        ]
        oldest = min(moments, key=lambda m: m[0])[0] if moments else None
        assert (part.oldest.at if part.oldest else None) == oldest
    assert [p.oldest for p in real.subscriptions] == [p.oldest for p in dry.subscriptions]
    if names is None:
        dropped = sum(1 for e in log if e["subscription"] == "dropped-sub")
        assert real.undeclared == ({"dropped-sub": dropped} if dropped else {})


def test_log_sizes_count_every_status_and_the_oldest_entry(store: SqlStore) -> None:
    insert_failures(
        store,
        [
            {"subscription": "orders-sqlstore", "message_id": "a", "status": "open",
             "first_seen": _ago(5 * DAY), "last_seen": _ago(DAY)},
            {"subscription": "orders-sqlstore", "message_id": "b", "status": "replayed",
             "first_seen": _ago(9 * DAY), "last_seen": _ago(8 * DAY), "resolved_at": _ago(2)},
            {"subscription": "customers-sqlstore", "message_id": "a", "status": "open",
             "first_seen": _ago(60), "last_seen": _ago(60)},
        ],
    )  # fmt: skip
    sizes = retention.log_sizes(store)
    assert set(sizes) == {"orders-sqlstore", "customers-sqlstore"}
    orders = sizes["orders-sqlstore"]
    assert (orders.entries, orders.open, orders.replayed) == (2, 1, 1)
    assert orders.oldest_at == _ago(9 * DAY)
    assert sizes["customers-sqlstore"].oldest_at == _ago(60)


def test_retention_keys_are_typed_config(config: Config) -> None:
    from core.config import ConfigError, parse_config

    sub = config.subscription("orders-sqlstore")
    assert (sub.failure_retention_days_replayed, sub.failure_retention_days_open) == (30, 0)
    text = (
        '[entities.orders]\nrethinkdb_db = "app"\nrethinkdb_table = "o"\nsql_table = "o"\n'
        '[entities.orders.columns]\nstatus = "string"\n'
        '[subscriptions.orders-sqlstore]\ntopic = "orders"\nentity = "orders"\n'
        'sink = "sqlstore"\nfailure_retention_days_open = -1\n'
    )
    with pytest.raises(ConfigError, match="failure_retention_days_open"):
        parse_config(text)


# -- the command line ------------------------------------------------------------------------
def test_purge_command_dry_run_then_real_run_never_open_without_the_flag(
    make_settings: Any,
    pubsub_server: ServiceInfo,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The declared defaults (replayed 30 days, open forever) through the CLI: the dry
    run names what is due and deletes nothing; the real run deletes just that and is
    audited; an old open entry stays until --include-open with --older-than."""
    s: Settings = make_settings(pubsub_emulator_host=pubsub_server.url)
    for key, value in {
        "CUTOVER_CONFIG_FILE": str(s.config_file),
        "CUTOVER_STATE_DIR": str(s.state_dir),
        "CUTOVER_PUBSUB_EMULATOR_HOST": pubsub_server.url,
        "CUTOVER_PUBSUB_PROJECT": s.pubsub_project,
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    rt = Runtime(s)
    rt.sql.ensure_schema(TABLES)
    now = datetime.now(UTC)
    insert_failures(
        rt.sql,
        [
            {"subscription": "orders-sqlstore", "message_id": "old-replayed", "status": "replayed",
             "first_seen": now - timedelta(days=50), "last_seen": now - timedelta(days=50),
             "resolved_at": now - timedelta(days=40)},
            {"subscription": "orders-sqlstore", "message_id": "new-replayed", "status": "replayed",
             "first_seen": now - timedelta(days=50), "last_seen": now - timedelta(days=50),
             "resolved_at": now - timedelta(days=3)},
            {"subscription": "orders-sqlstore", "message_id": "old-open", "status": "open",
             "first_seen": now - timedelta(days=400), "last_seen": now - timedelta(days=300)},
        ],
    )  # fmt: skip
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, ["subs", *args])
        assert result.exit_code == 0, result.output
        return result.output

    listed = {r["name"]: r for r in json.loads(run("list", "--json"))}
    assert listed["orders-sqlstore"]["failure_log"]["entries"] == 3
    assert listed["orders-sqlstore"]["failure_log"]["open"] == 1
    assert listed["orders-sqlstore"]["failure_log"]["oldest_at"].startswith(
        (now - timedelta(days=400)).date().isoformat()
    )

    out = run("failures", "purge", "orders-sqlstore", "--dry-run")
    assert "orders-sqlstore\t1\t-\t" in out and "old-replayed" in out
    assert "orders-sqlstore: open entries are kept unless --include-open is given" in out
    assert "dry run: 1 entries would be deleted; nothing deleted" in out
    assert set(_stored(rt.sql)) == {"old-replayed", "new-replayed", "old-open"}

    out = run("failures", "purge", "orders-sqlstore", "--actor", "ops")
    assert "deleted 1 entries" in out
    assert set(_stored(rt.sql)) == {"new-replayed", "old-open"}
    (entry,) = [e for e in audit.read(rt.sql, "orders-sqlstore") if e.action == "purge failures"]
    assert entry.actor == "ops" and entry.details["deleted"] == {"replayed": 1}

    run("failures", "purge", "--older-than", "200")  # open entries still need the flag
    assert set(_stored(rt.sql)) == {"new-replayed", "old-open"}
    out = run("failures", "purge", "--include-open", "--older-than", "200", "--json")
    assert json.loads(out)["deleted"] == 1
    assert set(_stored(rt.sql)) == {"new-replayed"}
    rt.close()


# -- the T-SQL (no SQL Server here: parsed offline, as tests/stores/test_tsql.py does) ----
@pytest.mark.parametrize("status", ["replayed", "open"])
def test_purge_tsql_parses_and_deletes_in_batches(status: str) -> None:
    import re

    import sqlfluff

    from stores.sql import get_dialect

    tsql = get_dialect("mssql")
    rule = retention.Rule("orders-sqlstore", status, 30, NOW)  # type: ignore[arg-type]
    count, oldest, params = retention.survey_sql(tsql, rule)
    delete, delete_params = retention.delete_sql(tsql, rule)
    assert delete.startswith("DELETE TOP (1000) FROM [subs_failures] WHERE ")
    assert params == delete_params == ["orders-sqlstore", status, NOW.replace(tzinfo=None)]
    assert "CAST(? AS DATETIME2(6))" in delete
    assert oldest.endswith("OFFSET 0 ROWS FETCH NEXT 1 ROWS ONLY")
    assert "LIMIT" not in count + oldest + delete  # sqlfluff's T-SQL parser lets LIMIT pass
    for sql in (count, oldest, delete, retention.log_sizes_sql(tsql)):
        named = re.sub(r"\?", "@p", sql)  # sqlfluff does not know ODBC's ? markers
        sqlfluff.parse(named + "\n", dialect="tsql")  # raises when it is not T-SQL
