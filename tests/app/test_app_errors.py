"""Errors of the read API against the real servers: every one an orderly JSON answer.

A 5xx leaves the keep-alive connection usable; a stored item beyond the contract's
limits (written around cutover, straight into a store) or one that does not map is a
503 naming entity, key and field, never the value, and is left as it is; a refused
login is a 503 at once, with no secret; ``/healthz`` shows states only, cached.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from rethinkdb import r

from core.settings import Settings
from flags.evaluator import FixedStage
from flags.stages import Stage
from stores.mapping import Row
from stores.runtime import Runtime

pytestmark = pytest.mark.parametrize("sql_dsn", ["postgresql"], indirect=True)

#: A JSON array nested 900 deep: valid JSON, far beyond the contract's 16 levels.
DEEP = "[" * 900 + "]" * 900


def _row(key: str, client: str = "C") -> Row:
    values = {"status": "ok", "amount": 1.5, "quantity": 2, "paid": True}
    return Row(key, client, 1, False, {**values, "placed_at": None, "meta": {"a": [1]}})


def _seed(rt: Runtime, entity: str, *rows: Row) -> None:
    ent = rt.cfg.entity(entity)
    rt.sql.apply(ent, list(rows))
    rt.rethink.write(ent, list(rows))


def _local_port(response: httpx.Response) -> Any:
    """The client side of the connection that carried ``response``."""
    return response.extensions["network_stream"].get_extra_info("client_addr")


def _raising(app: FastAPI) -> None:
    """Two routes of the test's own: an unexpected error deep in a handler's stack."""

    def deep(n: int) -> Any:
        return [deep(n - 1)] if n else []

    def recursion() -> Any:
        return deep(100_000)

    def value_error() -> Any:
        raise ValueError("a bug")

    app.add_api_route("/test/recursion", recursion)
    app.add_api_route("/test/value-error", value_error)


def test_an_unexpected_error_is_a_json_500_and_the_connection_stays_usable(
    runtime: Runtime, orders: str, serve: Any
) -> None:
    _seed(runtime, orders, _row("o-1"))
    api = serve(runtime, stages=FixedStage(Stage.NEW), extra=_raising)
    for path in ("/test/recursion", "/test/value-error"):
        failed = api.http.get(path)
        assert failed.status_code == 500
        assert failed.json() == {
            "error": "InternalError",
            "reason": "unexpected error; see the server log",
        }
        ok = api.http.get(f"/v1/{orders}/C/items/o-1")
        assert ok.status_code == 200, ok.text
        assert _local_port(ok) == _local_port(failed)  # the same keep-alive connection


def test_a_sql_row_beyond_the_limits_is_a_503_naming_key_and_field(
    runtime: Runtime, orders: str, serve: Any
) -> None:
    """Reproduction 4 of issue 13: a JSON column nested 900 deep, written straight into
    the table, at stage new. The item and any page holding it answer 503 (the README's
    rule for listings); another client's reads are unaffected; the row is kept."""
    _seed(runtime, orders, _row("o-1"), _row("o-2"), _row("x-1", client="D"))
    ent = runtime.cfg.entity(orders)
    q = runtime.sql.dialect.quote
    with runtime.sql.transaction() as cur:
        cur.execute(
            f"UPDATE {q(ent.sql_table)} SET {q('meta')} = ? WHERE {q(ent.key)} = ?", DEEP, "o-2"
        )
    api = serve(runtime, stages=FixedStage(Stage.NEW))
    item = api.http.get(f"/v1/{orders}/C/items/o-2")
    page = api.http.get(f"/v1/{orders}/C/items")
    for answer in (item, page):
        assert answer.status_code == 503, answer.text
        body = answer.json()
        assert (body["error"], body["store"]) == ("StoredValueInvalid", "sql")
        assert "'o-2'" in body["reason"] and "'meta'" in body["reason"]
        assert "nested more than 16 levels" in body["reason"]
        assert "[[[" not in answer.text  # the value is not echoed
    assert api.http.get(f"/v1/{orders}/C/items/o-1").status_code == 200
    assert api.http.get(f"/v1/{orders}/D/items").json()["items"][0]["key"] == "x-1"
    assert api.http.get(f"/v1/{orders}/C/items", params={"limit": 1}).status_code == 200
    assert runtime.sql.get(ent, "o-2") is not None  # nothing was repaired or removed


def test_a_rethinkdb_document_that_does_not_map_is_a_503_naming_it(
    runtime: Runtime, orders: str, serve: Any
) -> None:
    """At stage old: a document nested 900 deep (inserted as JSON text: the driver
    itself refuses to build such a query) and one whose status is a number."""
    _seed(runtime, orders, _row("o-1"))
    ent = runtime.cfg.entity(orders)
    docs = [
        f'{{"id": "deep", "client_id": "C", "version": 1, "meta": {DEEP}}}',
        '{"id": "typed", "client_id": "C", "version": 1, "status": 7}',
    ]
    with runtime.rethink.connection() as conn:
        for doc in docs:
            runtime.rethink.table(ent).insert(r.json(doc)).run(conn)
    api = serve(runtime, stages=FixedStage(Stage.OLD))
    reasons = {}
    for key, field in (("deep", "meta"), ("typed", "status")):
        answer = api.http.get(f"/v1/{orders}/C/items/{key}")
        assert answer.status_code == 503, answer.text
        assert (answer.json()["error"], answer.json()["store"]) == (
            "StoredValueInvalid",
            "rethinkdb",
        )
        reasons[key] = answer.json()["reason"]
        assert f"'{key}'" in reasons[key] and f"'{field}'" in reasons[key]
    assert "expected a string" in reasons["typed"]
    page = api.http.get(f"/v1/{orders}/C/items")
    assert page.status_code == 503 and page.json()["error"] == "StoredValueInvalid"
    assert api.http.get(f"/v1/{orders}/C/items/o-1").status_code == 200


def _store_runtime(runtime: Runtime, **overrides: Any) -> Runtime:
    """The test's runtime with other store settings (validated afresh)."""
    values = {**runtime.settings.model_dump(), **overrides}
    return Runtime(Settings(_env_file=None, **values), runtime.cfg)


def test_a_refused_login_is_a_503_at_once_without_the_secret(
    runtime: Runtime, orders: str, serve: Any
) -> None:
    """The SQL store with a user the server does not know (the test cluster trusts every
    known user), RethinkDB with a password reqlite refuses: each read answers 503 with
    "authentication failed", no Retry-After (waiting does not help), no secret or user."""
    secret = "s3cret-login-7f"
    dsn = re.sub(
        r"UID=[^;]*;PWD=[^;]*;",
        f"UID=nobody_x;PWD={secret};",
        runtime.settings.sql_dsn.get_secret_value(),  # type: ignore[union-attr]
    )
    sql_refused = _store_runtime(runtime, sql_dsn=dsn)
    rethink_refused = _store_runtime(runtime, rethinkdb_password=secret)
    for rt, stage, error, store in (
        (sql_refused, Stage.NEW, "StoreAuthFailed", "sql"),
        (rethink_refused, Stage.OLD, "RethinkAuthFailed", "rethinkdb"),
    ):
        api = serve(rt, stages=FixedStage(stage))
        for path in (f"/v1/{orders}/C/items", f"/v1/{orders}/C/items/o-1"):
            answer = api.http.get(path)
            assert answer.status_code == 503, answer.text
            body = answer.json()
            assert (body["error"], body["store"]) == (error, store)
            assert body["reason"].startswith("authentication failed for ")
            assert "Retry-After" not in answer.headers
            assert secret not in answer.text and "nobody_x" not in answer.text


def test_healthz_shows_states_only_and_is_checked_once_per_ttl(
    runtime: Runtime, store_settings: Any, serve: Any
) -> None:
    """Without the token: each dependency's state, nothing that locates or names it.
    With it, ``/admin/health`` has the detail. 40 concurrent calls cost one check."""
    token = "health-admin-token"
    rt = Runtime(store_settings(admin_token=token, pubsub_emulator_host="127.0.0.1:9"), runtime.cfg)
    api = serve(rt, stages=FixedStage(Stage.OLD))
    health = api.app.state.services.health

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            return await asyncio.gather(*(client.get("/healthz") for _ in range(40)))

    answers = asyncio.run(burst())
    assert health.checks == 1
    public = answers[0]
    assert {a.text for a in answers} == {public.text}
    assert set(public.json()) == {"status", "checked_at", "dependencies"}
    for name, dep in public.json()["dependencies"].items():
        assert dep == {"state": dep["state"]}, name
    assert public.json()["dependencies"]["pubsub"]["state"] == "down"
    sql_dsn = rt.settings.sql_dsn.get_secret_value()  # type: ignore[union-attr]
    port = re.search(r"PORT=(\d+)", sql_dsn).group(1)  # type: ignore[union-attr]
    states = json.dumps(public.json()["dependencies"])
    for revealing in ("127.0.0.1", port, str(rt.settings.rethinkdb_port), "postgres", "http", ":9"):
        assert revealing not in states, revealing

    full = api.http.get("/admin/health", headers={"Authorization": f"Bearer {token}"})
    assert full.status_code == 200
    assert (
        f"127.0.0.1:{rt.settings.rethinkdb_port}"
        in full.json()["dependencies"]["rethinkdb"]["target"]
    )
    assert full.json()["dependencies"]["pubsub"]["detail"]  # the reason it is down
    assert health.checks == 1  # the same cached report
    assert api.http.get("/admin/health").status_code == 401
    time.sleep(health.ttl_s + 0.1)  # the cached report has expired
    api.http.get("/healthz")
    assert health.checks == 2
    rt.close()
