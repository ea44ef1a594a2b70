"""Shadow reads through the real read service become per-client evidence in the admin API.

Two API servers (as two processes would) serve shadow reads over the same stores,
seeded alike but for one field changed in the SQL store for one client. Their
comparers count in memory and flush to the SQL store; the admin API of either shows
every client's comparisons, mismatches, rate and the gate's verdict, summed over both.
Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support import make_runtime

from core.config import Config
from core.settings import Settings
from flags.evaluator import FixedStage
from flags.stages import Stage
from stores.mapping import Row
from stores.runtime import Runtime

TOKEN = "evidence-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def rt(store_settings: Callable[..., Settings], flag_config: Config) -> Iterator[Runtime]:
    """The gate asks for 3 comparisons and no mismatch at all."""
    runtime = make_runtime(
        store_settings(
            admin_token=TOKEN, gate_min_shadow_comparisons=3, gate_max_shadow_mismatch_rate=0.0
        ),
        flag_config,
    )
    yield runtime
    runtime.close()


def _inject(rt: Runtime, entity: str, key: str) -> None:
    """Change one field of one row in the SQL store only, keeping its version."""
    ent = rt.cfg.entity(entity)
    q = rt.sql.dialect.quote
    with rt.sql.transaction() as cur:
        cur.execute(
            f"UPDATE {q(ent.sql_table)} SET {q('status')} = ? WHERE {q(ent.key)} = ?", "X", key
        )


def _admin(api: Any, path: str, **params: Any) -> dict[str, Any]:
    r = api.http.get(path, headers=AUTH, params=params or None)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_shadow_reads_become_per_client_evidence_in_the_admin_api(
    rt: Runtime, orders: str, seed_both: Callable[..., list[Row]], serve, read_options
) -> None:
    rows = seed_both(rt, orders)
    changed = min(
        (r for r in rows if r.client_id == "client-001" and not r.deleted), key=lambda r: r.key
    )
    _inject(rt, orders, changed.key)
    opts = read_options(shadow_evidence_flush_s=0.05)
    first = serve(rt, stages=FixedStage(Stage.SHADOW), opts=opts)
    second = serve(rt, stages=FixedStage(Stage.SHADOW), opts=opts)
    for api, client, reads in ((first, "client-000", 3), (second, "client-000", 2)):
        for _ in range(reads):
            assert api.get(f"/v1/{orders}/{client}/items").status_code == 200
    for _ in range(2):
        r = second.get(f"/v1/{orders}/client-001/items/{changed.key}")
        assert r.json()["fields"]["status"] == changed.values["status"]  # RethinkDB's
    first.drain()
    second.drain()

    report = _admin(first, f"/admin/shadow/{orders}")
    clients = {c["client"]: c for c in report["clients"]}
    assert set(clients) == {"client-000", "client-001"}  # client-002 was never read
    same, differs = clients["client-000"], clients["client-001"]
    assert (same["comparisons"], same["mismatches"], same["rate"], same["ok"]) == (5, 0, 0.0, True)
    assert (differs["comparisons"], differs["mismatches"], differs["mismatched_items"]) == (2, 2, 2)
    assert differs["rate"] == 1.0 and differs["ok"] is False
    assert "mismatch rate" in differs["reason"] and "client-001" in differs["reason"]
    assert report["clients"][0]["client"] == "client-001"  # blocked clients first
    assert (report["clients_total"], report["clients_blocked"]) == (2, 1)
    assert report["totals"]["comparisons"] == 7 and report["totals"]["mismatches"] == 2
    assert report["policy"] == {
        "min_comparisons": 3,
        "max_mismatch_rate": 0.0,
        "window_s": rt.settings.gate_shadow_window_s,
    }
    assert report["per_client"] == {"client-001": 2}  # two records of the same item
    assert {m["item_key"] for m in report["recent"]} == {changed.key}

    never = _admin(second, f"/admin/shadow/{orders}", client="client-002")["clients"]
    assert [(c["client"], c["comparisons"], c["ok"]) for c in never] == [("client-002", 0, False)]
    assert never[0]["reason"].startswith("no shadow comparisons")

    overview = _admin(second, "/admin/overview")
    entity = next(e for e in overview["entities"] if e["entity"] == orders)
    rows_by_client = {row["client"]: row for row in entity["clients"]}
    assert rows_by_client["client-000"]["shadow_evidence"]["comparisons"] == 5
    assert rows_by_client["client-001"]["shadow_evidence"]["ok"] is False
    assert entity["shadow"]["comparisons"] == 7 and entity["shadow"]["mismatched_comparisons"] == 2


def test_the_shadow_report_refuses_an_unknown_entity_and_a_tiny_window(rt: Runtime, serve) -> None:
    api = serve(rt, stages=FixedStage(Stage.SHADOW))
    unknown = api.http.get("/admin/shadow/nope", headers=AUTH)
    assert unknown.status_code == 404 and unknown.json()["error"] == "UnknownName"
    tiny = api.http.get(f"/admin/shadow/{next(iter(rt.cfg.entities))}?window_s=5", headers=AUTH)
    assert tiny.status_code == 422
