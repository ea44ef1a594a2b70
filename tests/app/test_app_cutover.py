"""Per-client cutover through a real Unleash server and the real read service.

shadow reads RethinkDB and records SQL differences; new reads SQL; rollback and the
kill switch bring reads back to RethinkDB; Unleash stopping changes nothing served.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.shadow import COMPARISONS, MISMATCH_COUNT, MismatchRecorder
from core.config import Config
from core.settings import Settings
from cutover import services
from flags.service import FlagService
from flags.stages import Stage
from stores.mapping import Row
from stores.runtime import Runtime

#: The issue's bound for a stage change to reach the API, plus slack for a loaded
#: 2-core test machine; the benchmark measures the real figure against 2 s.
PROPAGATION_BOUND_S = 2.0 + 1.0
WAIT_S = 15.0  # only so that a broken propagation fails instead of hanging


def _inject(rt: Runtime, entity: str, key: str, status: str) -> None:
    """Change one field of one row in the SQL store only, keeping its version."""
    ent = rt.cfg.entity(entity)
    q = rt.sql.dialect.quote
    with rt.sql.transaction() as cur:
        cur.execute(
            f"UPDATE {q(ent.sql_table)} SET {q('status')} = ? WHERE {q(ent.key)} = ?", status, key
        )


def _store_of(api: Any, entity: str, client: str) -> str:
    r = api.get(f"/v1/{entity}/{client}/items")
    assert r.status_code == 200, r.text
    return str(r.headers["X-Cutover-Store"])


def _wait_store(api: Any, entity: str, client: str, store: str, within: float) -> float:
    """Seconds until ``client`` is served from ``store``; fails after ``within``."""
    started = time.monotonic()
    while _store_of(api, entity, client) != store:
        assert time.monotonic() - started < within, f"{client} not served from {store}"
        time.sleep(0.05)
    return time.monotonic() - started


def _first_live(rows: list[Row], client: str) -> Row:
    return min((r for r in rows if r.client_id == client and not r.deleted), key=lambda r: r.key)


def test_shadow_serves_rethinkdb_and_records_sql_differences(
    unleash_runtime: Runtime, orders: str, seed_both, serve
) -> None:
    """Runs on SQLite and PostgreSQL. The injected difference is only recorded; the
    response still comes from RethinkDB, unchanged."""
    rows = seed_both(unleash_runtime, orders)
    service = FlagService(unleash_runtime)
    api = serve(unleash_runtime)
    service.set_stage(orders, "client-000", Stage.SHADOW, actor="t")
    assert _wait_stage(api, orders, "client-000", "shadow")
    assert _store_of(api, orders, "client-000") == "old"
    recorder = MismatchRecorder(unleash_runtime.sql)

    # Stores agree: comparisons run (counted as "same"), nothing is recorded.
    api.drain()
    same = COMPARISONS.labels(orders, "shadow", "same")
    agreed = same._value.get()
    api.get(f"/v1/{orders}/client-000/items", limit=3)
    row = _first_live(rows, "client-000")
    api.get(f"/v1/{orders}/client-000/items/{row.key}")
    api.drain()
    assert same._value.get() == agreed + 2
    assert recorder.recent(orders) == []

    # A difference in the SQL store only.
    before = MISMATCH_COUNT.labels(orders, "fields")._value.get()
    _inject(unleash_runtime, orders, row.key, "INJECTED")
    listed = api.get(f"/v1/{orders}/client-000/items", limit=3)
    assert listed.headers["X-Cutover-Store"] == "old"
    served = next(i for i in listed.json()["items"] if i["key"] == row.key)
    assert served["fields"]["status"] == row.values["status"]  # RethinkDB's value
    api.drain()
    (mismatch,) = recorder.recent(orders)
    assert (mismatch.client_id, mismatch.item_key, mismatch.kind) == (
        "client-000",
        row.key,
        "fields",
    )
    assert mismatch.fields == ["status"] and mismatch.stage == "shadow"
    assert mismatch.old_version == mismatch.new_version == row.version
    assert MISMATCH_COUNT.labels(orders, "fields")._value.get() == before + 1
    metric = f'cutover_shadow_mismatches_total{{entity="{orders}",kind="fields"}}'
    assert metric in api.get("/metrics").text

    # Other clients at old are never compared.
    api.get(f"/v1/{orders}/client-001/items")
    api.drain()
    assert len(recorder.recent(orders)) == 1
    service.close()


def _wait_stage(api: Any, entity: str, client: str, stage: str) -> bool:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if api.get(f"/v1/{entity}/{client}/items").headers["X-Cutover-Stage"] == stage:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sql_dsn", ["sqlite"], indirect=True)
def test_new_reads_sql_and_rollback_and_kill_return_to_rethinkdb(
    unleash_runtime: Runtime, orders: str, seed_both, serve
) -> None:
    rows = seed_both(unleash_runtime, orders)
    service = FlagService(unleash_runtime)
    api = serve(unleash_runtime)
    row = _first_live(rows, "client-001")
    _inject(unleash_runtime, orders, row.key, "ONLY-IN-SQL")
    item = f"/v1/{orders}/client-001/items/{row.key}"
    assert api.get(item).json()["fields"]["status"] == row.values["status"]

    service.set_stage(orders, "client-001", Stage.NEW, actor="t", force=True)
    _wait_store(api, orders, "client-001", "new", WAIT_S)
    assert api.get(item).json()["fields"]["status"] == "ONLY-IN-SQL"
    assert _store_of(api, orders, "client-000") == "old"  # one client at a time

    service.rollback(orders, "client-001", actor="t")
    _wait_store(api, orders, "client-001", "old", PROPAGATION_BOUND_S)
    assert api.get(item).json()["fields"]["status"] == row.values["status"]

    # Kill switch: several clients at shadow/new, all back to old at once.
    service.set_stage(orders, "client-000", Stage.SHADOW, actor="t")
    service.set_stage(orders, "client-001", Stage.NEW, actor="t", force=True)
    service.set_stage(orders, "client-002", Stage.NEW, actor="t", force=True)
    _wait_store(api, orders, "client-002", "new", WAIT_S)
    _wait_store(api, orders, "client-001", "new", WAIT_S)
    killed = service.kill(orders, actor="t", reason="incident")
    assert sorted(c.client_id for c in killed) == ["client-000", "client-001", "client-002"]
    for client in ("client-000", "client-001", "client-002"):
        _wait_stage(api, orders, client, "old")
        r = api.get(f"/v1/{orders}/{client}/items")
        assert (r.headers["X-Cutover-Stage"], r.headers["X-Cutover-Store"]) == ("old", "old")
    history = service.audit.history(orders)
    assert [c.reason for c in history[-3:]] == ["incident"] * 3
    service.close()


@pytest.fixture
def own_unleash() -> Any:
    """An Unleash (and its PostgreSQL) of this test alone: stopping it harms no other.

    Not under pytest's tmp_path (0700 as root): PostgreSQL runs as its own user and
    must be able to enter its data folder.
    """
    state = Path(tempfile.mkdtemp(prefix="cutover-test-own-unleash-"))
    state.chmod(0o711)
    try:
        info = services.up(["unleash"], state_dir=state)["unleash"]
        yield state, info
    finally:
        services.down(state_dir=state)
        shutil.rmtree(state, ignore_errors=True)


@pytest.mark.parametrize("sql_dsn", ["sqlite"], indirect=True)
def test_unleash_stopped_mid_test_reads_go_on_with_last_known_stages(
    own_unleash: tuple[Path, services.ServiceInfo],
    store_settings: Callable[..., Settings],
    flag_config: Config,
    orders: str,
    seed_both,
    serve,
) -> None:
    """Unleash goes away: every request still answers 200 from the store of the last
    known stage; a client never seen before reads ``old``; no error reaches callers."""
    state, info = own_unleash
    rt = Runtime(
        store_settings(
            unleash_url=info.url,
            unleash_admin_token=info.extra["admin_token"],
            unleash_backend_token=info.extra["backend_token"],
        ),
        flag_config,
    )
    rt.sql.ensure_schema()
    rt.rethink.ensure_tables()
    seed_both(rt, orders, clients=4)
    service = FlagService(rt)
    service.set_stage(orders, "client-000", Stage.SHADOW, actor="t")
    service.set_stage(orders, "client-001", Stage.NEW, actor="t", force=True)
    service.close()
    api = serve(rt)
    _wait_store(api, orders, "client-001", "new", WAIT_S)
    assert _wait_stage(api, orders, "client-000", "shadow")

    services.down(["unleash"], state_dir=state)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{info.url}/health", timeout=2)

    expected = {
        "client-000": ("shadow", "old"),
        "client-001": ("new", "new"),
        "client-002": ("old", "old"),
        "client-003": ("old", "old"),
    }
    deadline = time.monotonic() + 3 * rt.settings.unleash_refresh_interval_s + 1
    while time.monotonic() < deadline:  # across several failed refreshes
        for client, (stage, store) in expected.items():
            r = api.get(f"/v1/{orders}/{client}/items")
            assert r.status_code == 200, r.text
            assert (r.headers["X-Cutover-Stage"], r.headers["X-Cutover-Store"]) == (stage, store)
        time.sleep(0.2)
    rt.close()
