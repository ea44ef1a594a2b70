"""The read model over both stores: same responses, same cursors, clean errors."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from app.reads import ReadModel, decode_cursor, encode_cursor
from app.shadow import DROPPED, MismatchRecorder, ShadowComparer
from core.settings import Settings
from flags.evaluator import FixedStage
from flags.stages import Stage
from stores.mapping import Row
from stores.runtime import Runtime


def _walk(api: Any, entity: str, client: str, limit: int) -> tuple[list[dict], list[str | None]]:
    """Every page of a client's listing; returns the items and the cursors seen."""
    items: list[dict] = []
    cursors: list[str | None] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        r = api.get(f"/v1/{entity}/{client}/items", **params)
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        cursor = body["next_cursor"]
        cursors.append(cursor)
        if cursor is None:
            return items, cursors


def test_both_stores_give_the_same_pages_items_and_cursors(
    runtime: Runtime, orders: str, seed_both, serve
) -> None:
    """Runs on SQLite and PostgreSQL. Tombstones are excluded from both; a deleted id
    answers 404 from both."""
    rows: list[Row] = seed_both(runtime, orders)
    old = serve(runtime, stages=FixedStage(Stage.OLD))
    new = serve(runtime, stages=FixedStage(Stage.NEW))
    for client in ("client-000", "client-001", "client-002"):
        live = sorted(r.key for r in rows if r.client_id == client and not r.deleted)
        for limit in (1, 4, 100):
            old_items, old_cursors = _walk(old, orders, client, limit)
            new_items, new_cursors = _walk(new, orders, client, limit)
            assert old_items == new_items
            assert old_cursors == new_cursors
            assert [i["key"] for i in old_items] == live
    deleted = next(r for r in rows if r.deleted)
    for api, store in ((old, "old"), (new, "new")):
        r = api.get(f"/v1/{orders}/{deleted.client_id}/items/{deleted.key}")
        assert r.status_code == 404 and r.headers["X-Cutover-Store"] == store
        assert r.json()["error"] == "NotFound"
    alive = next(r for r in rows if not r.deleted)
    one = old.get(f"/v1/{orders}/{alive.client_id}/items/{alive.key}").json()
    assert one == new.get(f"/v1/{orders}/{alive.client_id}/items/{alive.key}").json()
    assert set(one) == {"key", "client", "version", "fields"}
    assert one["key"] == alive.key and one["version"] == alive.version
    # Another client's id is not found (no leak across clients).
    other = "client-000" if alive.client_id != "client-000" else "client-001"
    assert old.get(f"/v1/{orders}/{other}/items/{alive.key}").status_code == 404
    assert new.get(f"/v1/{orders}/{other}/items/{alive.key}").status_code == 404


def test_cursor_is_opaque_and_checked() -> None:
    assert decode_cursor(encode_cursor("client-000-000004")) == "client-000-000004"
    assert decode_cursor(encode_cursor("é/ü?&")) == "é/ü?&"
    with pytest.raises(ValueError):
        decode_cursor("%%%")


@pytest.mark.parametrize("sql_dsn", ["sqlite"], indirect=True)
def test_bad_requests_get_json_reasons(runtime: Runtime, orders: str, serve) -> None:
    api = serve(runtime, stages=FixedStage(Stage.OLD))
    bad = api.get(f"/v1/{orders}/client-000/items", cursor="%%%")
    assert bad.status_code == 400 and bad.json()["error"] == "InvalidCursor"
    unknown = api.get("/v1/nope/client-000/items")
    assert unknown.status_code == 404 and "unknown entity 'nope'" in unknown.json()["reason"]
    assert api.get(f"/v1/{orders}/client-000/items", limit=0).status_code == 422
    assert "cutover_shadow_dropped_total" in api.get("/metrics").text


def _with(settings: Settings, **overrides: Any) -> Settings:
    """Settings validated afresh (no cached dialect carried over)."""
    return Settings(_env_file=None, **{**settings.model_dump(), **overrides})


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


@pytest.mark.parametrize("sql_dsn", ["sqlite"], indirect=True)
def test_a_store_that_is_down_is_a_503_with_the_reason(
    runtime: Runtime, orders: str, serve
) -> None:
    """No stack trace, no secret: the reason names the store; nothing is written."""
    rethink_down = Runtime(_with(runtime.settings, rethinkdb_port=_closed_port()), runtime.cfg)
    old = serve(rethink_down, stages=FixedStage(Stage.SHADOW))
    r = old.get(f"/v1/{orders}/client-000/items")
    assert r.status_code == 503
    assert r.json()["error"] == "RethinkUnavailable" and r.json()["store"] == "rethinkdb"
    assert "Traceback" not in r.text and r.headers["Retry-After"]

    secret = "s3cret-pw"
    dsn = (
        f"DRIVER={{PostgreSQL Unicode}};SERVER=127.0.0.1;PORT={_closed_port()};"
        f"DATABASE=x;UID=postgres;PWD={secret};"
    )
    sql_down = Runtime(_with(runtime.settings, sql_dsn=dsn, sql_dialect="postgresql"), runtime.cfg)
    new = serve(sql_down, stages=FixedStage(Stage.NEW))
    for path in (f"/v1/{orders}/client-000/items", f"/v1/{orders}/client-000/items/x"):
        r = new.get(path)
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "StoreUnavailable" and r.json()["store"] == "sql"
        assert secret not in r.text and "Traceback" not in r.text


@pytest.mark.parametrize("sql_dsn", ["sqlite"], indirect=True)
def test_a_full_comparison_queue_drops_and_counts(
    runtime: Runtime, orders: str, read_options
) -> None:
    """With no free worker and a queue of one, the second comparison is dropped (and
    counted), never waited for: the request path cannot be slowed by comparisons."""
    comparer = ShadowComparer(
        ReadModel(runtime),
        MismatchRecorder(runtime.sql),
        read_options(shadow_queue_size=1, shadow_max_concurrency=1),
    )  # not started: nothing takes jobs off the queue
    ent = runtime.cfg.entity(orders)
    before = DROPPED.labels(orders)._value.get()
    for _ in range(3):
        comparer.page_served(Stage.SHADOW, "old", ent, "client-000", None, 10, [], None)
    assert DROPPED.labels(orders)._value.get() == before + 2
    comparer.page_served(Stage.OLD, "old", ent, "client-000", None, 10, [], None)
    assert DROPPED.labels(orders)._value.get() == before + 2  # old is never compared


@pytest.mark.parametrize("sql_dsn", ["sqlite"], indirect=True)
def test_comparison_kinds_in_shadow_and_sampled_new(
    runtime: Runtime, orders: str, seed_both, serve, read_options
) -> None:
    """A row missing from the SQL store, a row at another version, and the same seen
    from the new stage (compared against RethinkDB at new_compare_sample_rate=1)."""
    rows: list[Row] = seed_both(runtime, orders, clients=2)
    ent = runtime.cfg.entity(orders)
    live = sorted(
        (r for r in rows if r.client_id == "client-000" and not r.deleted), key=lambda r: r.key
    )
    gone, bumped = live[0], live[1]
    q = runtime.sql.dialect.quote
    with runtime.sql.transaction() as cur:
        cur.execute(f"DELETE FROM {q(ent.sql_table)} WHERE {q(ent.key)} = ?", gone.key)
        cur.execute(
            f"UPDATE {q(ent.sql_table)} SET {q(ent.version)} = ? WHERE {q(ent.key)} = ?",
            bumped.version + 5,
            bumped.key,
        )
    recorder = MismatchRecorder(runtime.sql)
    shadow = serve(runtime, stages=FixedStage(Stage.SHADOW))
    shadow.get(f"/v1/{orders}/client-000/items")
    shadow.drain()
    found = {(m.item_key, m.kind, m.stage) for m in recorder.recent(orders)}
    assert found == {(gone.key, "missing_in_new", "shadow"), (bumped.key, "version", "shadow")}

    new = serve(
        runtime, stages=FixedStage(Stage.NEW), opts=read_options(new_compare_sample_rate=1.0)
    )
    r = new.get(f"/v1/{orders}/client-000/items/{bumped.key}")
    assert r.json()["version"] == bumped.version + 5  # served from SQL
    new.drain()
    (latest,) = [m for m in recorder.recent(orders) if m.stage == "new"]
    assert (latest.item_key, latest.kind) == (bumped.key, "version")
    assert (latest.old_version, latest.new_version) == (bumped.version, bumped.version + 5)
