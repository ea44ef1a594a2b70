"""The read API's outcomes per client, counted by the rollout's hook in the real app.

The app is ``app.main.create_app`` (which adds the hook as its outermost middleware),
served in process by Starlette's test client (lifespan included). 5xx answers come
from stored values the read API refuses (written around cutover, straight into a
store), so every error is the app's own.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi.testclient import TestClient
from rethinkdb import r

from app.main import create_app
from core.clock import now_utc
from flags.evaluator import StageReader
from flags.evidence import Outcomes, bucket_start, outcomes_per_client
from flags.rollout_outcomes import CountReadOutcomes
from flags.service import FlagService
from flags.stages import Stage
from stores.mapping import Row
from stores.runtime import Runtime

DEEP = "[" * 900 + "]" * 900  # valid JSON, beyond the contract's 16 levels


def _row(key: str, client: str) -> Row:
    values = {"status": "ok", "amount": 1.5, "quantity": 2, "paid": True}
    return Row(key, client, 1, False, {**values, "placed_at": None, "meta": {"a": [1]}})


def test_each_response_is_counted_per_client_at_shadow_and_new_with_its_5xx(
    file_runtime: Runtime, orders: str
) -> None:
    """Clients at new (one with a '/' in its id), shadow and old: 200s and 503s. Every
    response at new and shadow is counted for its client and stage, the 503s as server
    errors; nothing is counted at old; the counts are in the SQL store once the app
    has shut down (its flusher's last flush)."""
    rt = file_runtime
    ent = rt.cfg.entity(orders)
    clients = {"N": Stage.NEW, "team/7": Stage.NEW, "S": Stage.SHADOW, "O": Stage.OLD}
    rows = [_row(f"{c}-ok", c) for c in clients] + [_row("N-bad", "N")]
    rt.sql.apply(ent, rows)
    rt.rethink.write(ent, rows)
    q = rt.sql.dialect.quote
    with rt.sql.transaction() as cur:
        cur.execute(
            f"UPDATE {q(ent.sql_table)} SET {q('meta')} = ? WHERE {q(ent.key)} = ?", DEEP, "N-bad"
        )
    with rt.rethink.connection() as conn:
        for client in ("S", "O"):
            doc = f'{{"id": "{client}-bad", "client_id": "{client}", "version": 1, "status": 7}}'
            rt.rethink.table(ent).insert(r.json(doc)).run(conn)
    service = FlagService(rt)
    for client, stage in clients.items():
        if stage is not Stage.OLD:
            service.set_stage(orders, client, stage, actor="t", force=True)

    reader = StageReader(rt.settings)
    app = create_app(rt, stages=reader)  # create_app adds the CountReadOutcomes hook
    assert any(m.cls is CountReadOutcomes for m in app.user_middleware)
    asked = {"N": (3, 2), "team/7": (2, 0), "S": (4, 1), "O": (2, 2)}  # (oks, bads)
    with TestClient(app) as http:
        for client, (oks, bads) in asked.items():
            path = f"/v1/{orders}/{quote(client, safe='')}/items"
            for _ in range(oks):
                answer = http.get(f"{path}/{quote(client + '-ok', safe='')}")
                assert answer.status_code == 200, answer.text
                assert answer.headers["X-Cutover-Stage"] == clients[client].value
            for _ in range(bads):
                assert http.get(f"{path}/{client}-bad").status_code == 503
        assert http.get(f"/v1/{orders}/%ZZ/items").status_code == 400  # not a client
        assert http.get("/healthz").status_code in (200, 503)  # not counted either
    found = outcomes_per_client(rt.sql, orders, since=bucket_start(now_utc(), 3600))
    assert found == {
        "N": Outcomes(served=5, server_errors=2),
        "team/7": Outcomes(served=2, server_errors=0),
        "S": Outcomes(served=5, server_errors=1),
    }
    by_stage = outcomes_per_client(
        rt.sql, orders, since=bucket_start(now_utc(), 3600), stages=["shadow"]
    )
    assert set(by_stage) == {"S"}
