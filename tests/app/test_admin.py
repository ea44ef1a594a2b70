"""The admin API and /healthz against real stores: SQLite file, reqlite, the flag file.

Each test builds the real app (``app.main.create_app``) over a runtime of its own: a
fresh SQLite file and flag file in the test's state dir, a private RethinkDB database,
RethinkDB seeded with a small synthetic history of three clients. Nothing is mocked:
backfills and verifications are run with the backfill area's own code, and the admin
API must report exactly what they stored.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from app_support import stream_through_worker
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.api.routes import admin as admin_routes
from app.main import create_app
from app.shadow import Mismatch, MismatchRecorder
from backfill.progress import Progress
from backfill.runner import Backfill, Options
from backfill.sources import RethinkSource
from backfill.verify import Verifier
from core.clock import now_utc
from core.config import Config
from core.events import Event
from core.settings import Settings
from cutover import services
from cutover.synthetic import client_ids, generate_history, reference
from flags.file_backend import FileBackend
from flags.stages import Stage
from stores.mapping import Row
from stores.runtime import Runtime
from subscribers import failures

TOKEN = "s3cret-admin-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLIENTS = client_ids(3)  # client-000, client-001, client-002


def _quiet(title: str, total: int | None, done: int) -> Progress:
    return Progress(title, total, done, tty=False, emit=lambda line: None)


def seed_old_store(rt: Runtime, entity: str = "orders") -> list[Row]:
    """The synthetic history's final state, in RethinkDB only (the backfill copies it)."""
    ent = rt.cfg.entity(entity)
    rows = list(reference(ent, generate_history(ent, clients=3, ids_per_client=8, seed=5)).values())
    rt.rethink.write(ent, rows)
    return rows


def run_backfill(rt: Runtime, entity: str = "orders") -> None:
    ent = rt.cfg.entity(entity)
    summary = Backfill(
        rt.sql, RethinkSource(rt.rethink), ent, Options(rate=0), progress=_quiet
    ).run()
    assert summary.complete


def run_verify(rt: Runtime, entity: str = "orders") -> None:
    ent = rt.cfg.entity(entity)
    Verifier(rt.sql, RethinkSource(rt.rethink), ent, recheck_delay_s=0.0, progress=_quiet).run()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def admin_settings(
    make_settings: Callable[..., Settings], rethink_server: services.ServiceInfo
) -> Settings:
    return make_settings(
        admin_token=TOKEN, rethinkdb_host=rethink_server.host, rethinkdb_port=rethink_server.port
    )


@pytest.fixture
def rt(admin_settings: Settings, config: Config) -> Iterator[Runtime]:
    runtime = Runtime(admin_settings, config)
    runtime.sql.ensure_schema()
    runtime.rethink.ensure_tables()
    seed_old_store(runtime)
    yield runtime
    runtime.close()


def build_app(rt: Runtime) -> FastAPI:
    app = create_app(rt)
    if not any(getattr(r, "path", "") == "/admin/overview" for r in app.routes):
        app.include_router(admin_routes.router)  # main.py does not mount it yet
    return app


@pytest.fixture
def client(rt: Runtime) -> Iterator[TestClient]:
    with TestClient(build_app(rt)) as test_client:
        yield test_client


def by_client(entity_view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["client"]: row for row in entity_view["clients"]}


# -- the token --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer "},
    ],
    ids=["none", "wrong", "longer", "basic-scheme", "no-scheme", "empty"],
)
def test_admin_api_refuses_requests_without_the_right_token(
    client: TestClient, headers: dict[str, str]
) -> None:
    """Bad input: the request is refused before any store is read or flag changed."""
    for method, path in [
        ("GET", "/admin/overview"),
        ("GET", "/admin/flags/orders"),
        ("POST", "/admin/flags/orders/rollback"),
    ]:
        response = client.request(
            method, path, headers=headers, json={"client": CLIENTS[0]} if method == "POST" else None
        )
        assert response.status_code == 401, (path, response.text)
        assert response.json()["error"] == "Unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN not in response.text


def test_admin_api_answers_with_the_right_token(client: TestClient) -> None:
    response = client.get("/admin/overview", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert TOKEN not in response.text
    assert [e["entity"] for e in response.json()["entities"]] == ["orders", "customers"]


def test_admin_api_is_off_when_no_token_is_configured(
    make_settings: Callable[..., Settings], rethink_server: services.ServiceInfo, config: Config
) -> None:
    """Safe default: no CUTOVER_ADMIN_TOKEN means every admin request is refused (503)."""
    settings = make_settings(rethinkdb_host=rethink_server.host, rethinkdb_port=rethink_server.port)
    runtime = Runtime(settings, config)
    with TestClient(build_app(runtime)) as test_client:
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer anything"}):
            response = test_client.get("/admin/overview", headers=headers)
            assert response.status_code == 503
            assert response.json()["error"] == "AdminDisabled"
            assert "CUTOVER_ADMIN_TOKEN" in response.json()["reason"]
    runtime.close()


def test_read_api_stays_open_without_a_token(client: TestClient) -> None:
    response = client.get(f"/v1/orders/{CLIENTS[0]}/items")
    assert response.status_code == 200
    assert response.json()["items"], "the seeded client has live items in RethinkDB"


# -- flags --------------------------------------------------------------------------------
def test_stage_changes_go_through_the_gate_and_are_audited(client: TestClient, rt: Runtime) -> None:
    """Bad input (``new`` for a client with no backfill): 409 with the gate's reason and
    the stage stays where it was; only the allowed moves are audited."""
    target = CLIENTS[1]
    stages = by_client(client.get("/admin/flags/orders", headers=AUTH).json())
    assert set(stages) == set(CLIENTS)
    assert {row["stage"] for row in stages.values()} == {"old"}

    moved = client.post(
        "/admin/flags/orders/stage",
        headers=AUTH,
        json={"client": target, "stage": "shadow", "reason": "dark reads first", "actor": "alice"},
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["change"]["to_stage"] == "shadow"

    refused = client.post(
        "/admin/flags/orders/stage",
        headers=AUTH,
        json={"client": target, "stage": "new", "actor": "alice"},
    )
    assert refused.status_code == 409
    assert refused.json()["error"] == "GateRefused"
    assert "backfill not started" in refused.json()["reason"]
    assert (
        by_client(client.get("/admin/flags/orders", headers=AUTH).json())[target]["stage"]
        == "shadow"
    )

    back = client.post(
        "/admin/flags/orders/rollback",
        headers=AUTH,
        json={"client": target, "reason": "mismatches", "actor": "bob"},
    )
    assert back.status_code == 200
    assert back.json()["change"]["from_stage"] == "shadow"
    row = by_client(client.get("/admin/flags/orders", headers=AUTH).json())[target]
    assert row["stage"] == "old"
    assert row["last_change"]["actor"].startswith("bob@")

    audit = client.get("/admin/audit", headers=AUTH, params={"entity": "orders"}).json()
    assert [(e["subject"], e["action"]) for e in audit] == [
        (target, "stage shadow -> old"),
        (target, "stage old -> shadow"),
    ]
    assert audit[0]["detail"] == "mismatches"
    assert "alice@" in audit[1]["actor"]


def test_gate_lets_a_verified_client_move_to_new_and_refuses_a_dirty_one(
    client: TestClient, rt: Runtime
) -> None:
    run_backfill(rt)
    ent = rt.cfg.entity("orders")
    dirty_row = next(r for r in rt.sql.scan(ent, CLIENTS[2]) if not r.deleted)
    # A later version that only the SQL store has: verification reports it.
    rt.sql.apply(
        ent,
        [Row(dirty_row.key, dirty_row.client_id, dirty_row.version + 1, False, dirty_row.values)],
    )
    run_verify(rt)

    ok = client.post(
        "/admin/flags/orders/stage", headers=AUTH, json={"client": CLIENTS[0], "stage": "new"}
    )
    assert ok.status_code == 200, ok.text
    assert "verified clean" in ok.json()["change"]["gate"]
    refused = client.post(
        "/admin/flags/orders/stage", headers=AUTH, json={"client": CLIENTS[2], "stage": "new"}
    )
    assert refused.status_code == 409
    assert "1 differences: not clean" in refused.json()["reason"]


def test_kill_switch_needs_the_entity_name_and_sends_everyone_back(client: TestClient) -> None:
    """Bad input (missing or wrong confirmation): 422 and no flag changes."""
    for c in CLIENTS[:2]:
        assert (
            client.post(
                "/admin/flags/orders/stage", headers=AUTH, json={"client": c, "stage": "shadow"}
            ).status_code
            == 200
        )
    wrong = client.post("/admin/flags/orders/kill", headers=AUTH, json={"confirm": "customers"})
    assert wrong.status_code == 422
    assert client.post("/admin/flags/orders/kill", headers=AUTH, json={}).status_code == 422
    stages = by_client(client.get("/admin/flags/orders", headers=AUTH).json())
    assert [stages[c]["stage"] for c in CLIENTS] == ["shadow", "shadow", "old"]

    killed = client.post("/admin/flags/orders/kill", headers=AUTH, json={"confirm": "orders"})
    assert killed.status_code == 200
    assert sorted(killed.json()["clients"]) == CLIENTS[:2]
    stages = by_client(client.get("/admin/flags/orders", headers=AUTH).json())
    assert {stages[c]["stage"] for c in CLIENTS} == {"old"}


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        (
            "/admin/flags/nope/stage",
            {"client": "client-000", "stage": "shadow"},
            404,
            "UnknownName",
        ),
        (
            "/admin/flags/orders/stage",
            {"client": " client-000", "stage": "shadow"},
            422,
            "InvalidClientId",
        ),
        (
            "/admin/flags/orders/stage",
            {"client": "client-999", "stage": "shadow"},
            409,
            "GateRefused",
        ),
        ("/admin/flags/orders/stage", {"client": "client-000", "stage": "newest"}, 422, None),
        ("/admin/backfill/nope/pause", {}, 404, "UnknownName"),
    ],
    ids=["unknown-entity", "padded-id", "unknown-client", "bad-stage", "unknown-backfill"],
)
def test_bad_requests_are_refused_with_a_reason(
    client: TestClient, path: str, body: dict[str, Any], status: int, error: str | None
) -> None:
    """Bad input: refused with the reason, and no flag file is written at all."""
    response = client.post(path, headers=AUTH, json=body)
    assert response.status_code == status, response.text
    if error:
        assert response.json()["error"] == error
    stages = by_client(client.get("/admin/flags/orders", headers=AUTH).json())
    assert {row["stage"] for row in stages.values()} == {"old"}


# -- backfill and verification ------------------------------------------------------------
def test_backfill_progress_and_pause_resume(client: TestClient, rt: Runtime) -> None:
    before = client.get("/admin/backfill/orders", headers=AUTH).json()
    assert before == {"entity": "orders", "paused": False, "runs": []}
    run_backfill(rt)
    documents = rt.rethink.count(rt.cfg.entity("orders"))

    view = client.get("/admin/backfill/orders", headers=AUTH).json()
    (run,) = view["runs"]
    assert run["state"] == "done"
    assert run["rows_done"] == documents
    assert run["percent"] == 100.0
    assert run["eta_s"] == 0.0
    assert run["partitions_done"] == run["partitions"]
    detail = client.get(f"/admin/backfill/orders/runs/{run['run_id']}", headers=AUTH).json()
    assert sum(p["rows_read"] for p in detail["partition_list"]) == documents
    assert client.get("/admin/backfill/orders/runs/nope", headers=AUTH).status_code == 404

    paused = client.post("/admin/backfill/orders/pause", headers=AUTH, json={"reason": "peak"})
    assert paused.json() == {"entity": "orders", "paused": True}
    assert client.get("/admin/backfill", headers=AUTH).json()[0]["paused"] is True
    resumed = client.post("/admin/backfill/orders/resume", headers=AUTH, json={})
    assert resumed.json() == {"entity": "orders", "paused": False}


def test_run_progress_rate_and_eta_from_partition_counts() -> None:
    """A run half done after 10 s: 50 rows/s on average, 10 s left; paused: no ETA."""
    from datetime import timedelta

    from app.admin.backfill import RateTracker, run_progress
    from backfill.partitions import Partition, Run
    from core.clock import now_utc

    now = now_utc()
    start = now - timedelta(seconds=10)
    part = Partition(
        run_id="r",
        part="p0",
        entity="orders",
        ord=0,
        client=None,
        spec={},
        status="pending",
        owner="w1",
        lease_expires=now + timedelta(seconds=30),
        position=None,
        last_key=None,
        est_rows=1000,
        rows_read=500,
        rows_applied=500,
        rows_stale=0,
        bad_docs=0,
        batches=5,
        started_at=start,
        finished_at=None,
    )
    run = Run("r", "orders", {}, None, "running", 1, start, None)
    view = run_progress(run, [part], paused=False, now=now, tracker=RateTracker())
    assert view["state"] == "running"
    assert view["percent"] == 50.0
    assert view["rate_rows_s"] == 50.0
    assert view["eta_s"] == pytest.approx(10.0)
    paused = run_progress(run, [part], paused=True, now=now, tracker=RateTracker())
    assert paused["state"] == "paused"
    assert paused["eta_s"] is None

    tracker = RateTracker()
    assert tracker.observe("r", 100, at=0.0) is None
    assert tracker.observe("r", 400, at=2.0) == 150.0  # recent rate from two looks
    assert tracker.observe("r", 10, at=3.0) is None  # counts restarted: start over


def test_verification_results_per_client(client: TestClient, rt: Runtime) -> None:
    run_backfill(rt)
    ent = rt.cfg.entity("orders")
    row = next(r for r in rt.sql.scan(ent, CLIENTS[1]) if not r.deleted)
    rt.sql.apply(ent, [Row(row.key, row.client_id, row.version + 1, False, row.values)])
    run_verify(rt)

    latest = {v["client"]: v for v in client.get("/admin/verification/orders", headers=AUTH).json()}
    assert latest[CLIENTS[0]]["verification"]["clean"] is True
    assert latest[CLIENTS[0]]["backfill_state"] == "verified"
    assert latest[CLIENTS[1]]["verification"]["clean"] is False
    assert latest[CLIENTS[1]]["verification"]["differences"] == 1
    everything = client.get("/admin/verification", headers=AUTH).json()
    assert set(everything) == {"orders", "customers"}

    (last,) = client.get(f"/admin/verification/orders/{CLIENTS[1]}", headers=AUTH).json()
    assert last["by_kind"] == {"version_mismatch": 1}
    assert last["mode"] == "full"


# -- subscriptions ---------------------------------------------------------------------------
@pytest.fixture
def pubsub_rt(
    admin_settings: Settings,
    config: Config,
    pubsub_server: services.ServiceInfo,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Runtime]:
    """The test's runtime on the session's Pub/Sub server (its own project)."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_server.url)  # restored afterwards
    settings = admin_settings.model_copy(update={"pubsub_emulator_host": pubsub_server.url})
    runtime = Runtime(settings, config)
    runtime.sql.ensure_schema()
    runtime.rethink.ensure_tables()
    yield runtime
    runtime.close()


def test_subscription_health_failure_log_and_replay(pubsub_rt: Runtime) -> None:
    """Bad input (a body that is not JSON): logged as a failure, counted, still open after
    a replay (it fails again, one more attempt); a valid message the store had refused
    is applied by the replay and the row appears in the SQL store."""
    rt = pubsub_rt
    orders = rt.cfg.entity("orders")
    events = generate_history(orders, clients=2, ids_per_client=4, seed=3)
    stream_through_worker(rt, events, b"this is not json", actor="tester")
    with TestClient(build_app(rt)) as client:
        health = {
            s["name"]: s
            for s in client.get("/admin/subscriptions", headers=AUTH).json()["subscriptions"]
        }
        sqlstore = health["orders-sqlstore"]
        assert sqlstore["exists"] is True
        assert sqlstore["status"] in ("ok", "drift")  # cloudbox drops the dead-letter policy
        assert sqlstore["applied"] + sqlstore["stale"] == len(events)
        assert sqlstore["failed"] == 1
        assert sqlstore["failure_log_size"] == 1
        assert sqlstore["lag_s"] is not None
        assert health["customers-sqlstore"]["status"] == "missing", json.dumps(health, indent=1)

        listed = client.get("/admin/subscriptions/orders-sqlstore/failures", headers=AUTH).json()
        (entry,) = listed["failures"]
        assert entry["data"] == "this is not json"
        shown = client.get(
            f"/admin/subscriptions/orders-sqlstore/failures/{entry['message_id']}", headers=AUTH
        ).json()
        assert shown["attempts"] == 1
        assert "JSON" in shown["error"] or "json" in shown["error"]

        # A valid event the store had refused (e.g. a column too narrow at the time).
        fixed = Event(
            event_id="e-fix",
            entity="orders",
            op="upsert",
            id="o-replayed",
            client_id="client-009",
            version=1,
            occurred_at=now_utc(),
            data={"status": "paid", "amount": 3.5},
        )
        with rt.sql.transaction() as cur:
            failures.record(
                rt.sql,
                cur,
                rt.cfg.subscription("orders-sqlstore"),
                [
                    failures.Poison(
                        "m-fix",
                        fixed.to_json_bytes(),
                        fixed.attributes,
                        fixed.ordering_key,
                        1,
                        "the SQL store rejected the row",
                    )
                ],
            )

        replayed = client.post(
            "/admin/subscriptions/orders-sqlstore/replay", headers=AUTH, json={"actor": "erin"}
        )
        assert replayed.status_code == 200, replayed.text
        assert replayed.json()["tally"] == {"applied": 1, "failed": 1}
        assert replayed.json()["open"] == 1
        assert rt.sql.get(orders, "o-replayed") is not None
        still = client.get(
            f"/admin/subscriptions/orders-sqlstore/failures/{entry['message_id']}", headers=AUTH
        ).json()
        assert (still["status"], still["attempts"]) == ("open", 2)

        audit = client.get("/admin/audit", headers=AUTH).json()
        replays = [e for e in audit if e["action"] == "replay"]
        assert len(replays) == 2
        assert all(e["actor"].startswith("erin@") for e in replays)
        assert any(e["action"] == "add" and e["actor"] == "tester" for e in audit)

        missing = client.get("/admin/subscriptions/orders-sqlstore/failures/nope", headers=AUTH)
        assert missing.status_code == 404
        assert client.get("/admin/subscriptions/nope/failures", headers=AUTH).status_code == 404


# -- the overview (what the console shows) ------------------------------------------------
def test_overview_assembles_stage_backfill_verification_and_mismatches(
    client: TestClient, rt: Runtime
) -> None:
    run_backfill(rt)
    run_verify(rt)
    client.post(
        "/admin/flags/orders/stage", headers=AUTH, json={"client": CLIENTS[0], "stage": "shadow"}
    )
    MismatchRecorder(rt.sql).record(
        [
            Mismatch("orders", CLIENTS[0], "k1", "fields", ["status"], 2, 2, "shadow"),
            Mismatch("orders", CLIENTS[0], "k2", "missing_in_new", [], 1, None, "shadow"),
        ]
    )

    data = client.get("/admin/overview", headers=AUTH).json()
    assert data["errors"] == {}
    orders = next(e for e in data["entities"] if e["entity"] == "orders")
    assert orders["errors"] == {}
    rows = by_client(orders)
    assert rows[CLIENTS[0]]["stage"] == "shadow"
    assert rows[CLIENTS[0]]["shadow_mismatches"] == 2
    assert rows[CLIENTS[1]]["shadow_mismatches"] == 0
    for c in CLIENTS:
        assert rows[c]["backfill"]["state"] == "verified"
        assert rows[c]["verification"]["clean"] is True
    assert orders["backfill"]["latest_run"]["state"] == "done"
    assert data["audit"][0]["subject"] == CLIENTS[0]
    customers = next(e for e in data["entities"] if e["entity"] == "customers")
    assert customers["clients"] == []

    shadow = client.get("/admin/shadow/orders", headers=AUTH).json()
    assert shadow["per_client"] == {CLIENTS[0]: 2}
    assert {m["item_key"] for m in shadow["recent"]} == {"k1", "k2"}


def test_overview_names_a_store_that_is_down_instead_of_failing(
    admin_settings: Settings, config: Config
) -> None:
    """RethinkDB unreachable: the page still loads, the parts that need it say why, and
    the stages still come from the flag backend, which needs no store."""
    settings = admin_settings.model_copy(
        update={"rethinkdb_port": closed_port(), "rethinkdb_timeout_s": 1.0}
    )
    runtime = Runtime(settings, config)
    runtime.sql.ensure_schema()
    FileBackend.from_settings(settings).write("orders", Stage.SHADOW, [CLIENTS[0]])
    with TestClient(build_app(runtime)) as test_client:
        response = test_client.get("/admin/overview", headers=AUTH)
    runtime.close()
    assert response.status_code == 200
    orders = next(e for e in response.json()["entities"] if e["entity"] == "orders")
    assert "RethinkUnavailable" in orders["errors"]["stages"]
    assert by_client(orders)[CLIENTS[0]]["stage"] == "shadow"


def test_rollback_works_while_the_sql_store_is_down(
    admin_settings: Settings, config: Config
) -> None:
    """The SQL store unreachable: the overview names it, and a rollback still takes
    effect at once (the audit record waits in the local pending file)."""
    dsn = (
        f"DRIVER={{PostgreSQL Unicode}};SERVER=127.0.0.1;PORT={closed_port()};"
        "DATABASE=cutover;UID=nobody;PWD=not-used"
    )
    settings = admin_settings.model_copy(
        update={"sql_dsn": SecretStr(dsn), "sql_dialect": "postgresql"}
    )
    runtime = Runtime(settings, config)
    FileBackend.from_settings(settings).write("orders", Stage.SHADOW, [CLIENTS[0]])
    with TestClient(build_app(runtime)) as test_client:
        overview = test_client.get("/admin/overview", headers=AUTH).json()
        back = test_client.post(
            "/admin/flags/orders/rollback",
            headers=AUTH,
            json={"client": CLIENTS[0], "reason": "store incident"},
        )
    runtime.close()
    orders = next(e for e in overview["entities"] if e["entity"] == "orders")
    assert "StoreUnavailable" in orders["errors"]["backfill ledger"]
    assert "not-used" not in str(overview)
    assert back.status_code == 200, back.text
    assert back.json()["change"]["from_stage"] == "shadow"
    flags = FileBackend.from_settings(settings).read("orders")
    assert flags.stage_of(CLIENTS[0]) is Stage.OLD
    assert "store incident" in (settings.state_dir / "flags" / "audit-pending.jsonl").read_text()


# -- healthz and metrics ------------------------------------------------------------------
def test_healthz_reports_every_dependency_up(
    admin_settings: Settings, config: Config, pubsub_server: services.ServiceInfo
) -> None:
    settings = admin_settings.model_copy(update={"pubsub_emulator_host": pubsub_server.url})
    runtime = Runtime(settings, config)
    with TestClient(build_app(runtime)) as test_client:
        body = test_client.get("/healthz").json()
        full = test_client.get("/admin/health", headers=AUTH).json()
        metrics = test_client.get("/metrics").text
    runtime.close()
    assert body["status"] == "ok", body
    assert set(body["dependencies"]) == {"pubsub", "sql", "rethinkdb", "unleash"}
    assert {d["state"] for d in body["dependencies"].values()} == {"up"}
    assert {d["state"] for d in full["dependencies"].values()} == {"up"}
    assert 'cutover_dependency_up{dependency="rethinkdb"} 1.0' in metrics


def test_healthz_checks_a_real_unleash_server(
    admin_settings: Settings, config: Config, unleash_server: services.ServiceInfo
) -> None:
    """With Unleash configured, its /health is asked (no token needed, none shown)."""
    token = unleash_server.extra["admin_token"]
    settings = admin_settings.model_copy(
        update={"unleash_url": unleash_server.url, "unleash_admin_token": SecretStr(token)}
    )
    runtime = Runtime(settings, config)
    with TestClient(build_app(runtime)) as test_client:
        response = test_client.get("/admin/health", headers=AUTH)
    runtime.close()
    unleash = response.json()["dependencies"]["unleash"]
    assert unleash["state"] == "up", unleash
    assert unleash["target"] == f"Unleash {unleash_server.url}"
    assert token not in response.text


def test_healthz_reports_a_stopped_dependency_as_down_without_failing(
    admin_settings: Settings, config: Config, pubsub_server: services.ServiceInfo
) -> None:
    """RethinkDB pointed at a closed port: reported down with the reason, still 200
    (503 only with ?strict=true); the other dependencies are still checked."""
    settings = admin_settings.model_copy(
        update={"pubsub_emulator_host": pubsub_server.url, "rethinkdb_port": closed_port()}
    )
    runtime = Runtime(settings, config)
    with TestClient(build_app(runtime)) as test_client:
        response = test_client.get("/admin/health", headers=AUTH)
        strict = test_client.get("/healthz", params={"strict": "true"})
        metrics = test_client.get("/metrics").text
    runtime.close()
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    rethink = body["dependencies"]["rethinkdb"]
    assert rethink["state"] == "down"
    assert str(settings.rethinkdb_port) in rethink["target"]
    assert "RethinkUnavailable" in rethink["detail"]
    assert body["dependencies"]["sql"]["state"] == "up"
    assert body["dependencies"]["pubsub"]["state"] == "up"
    assert strict.status_code == 503
    assert 'cutover_dependency_up{dependency="rethinkdb"} 0.0' in metrics


def test_healthz_never_shows_secrets(
    make_settings: Callable[..., Settings], config: Config, postgres_dsn: str
) -> None:
    """A DSN with a password and an Unleash token: neither appears in the answer."""
    dsn = postgres_dsn + ";PWD=hunter2-secret"
    settings = make_settings(
        admin_token=TOKEN,
        sql_dsn=dsn,
        unleash_url=f"http://127.0.0.1:{closed_port()}",
        unleash_admin_token="*:*.unleash-secret",
        rethinkdb_port=closed_port(),
    )
    runtime = Runtime(settings, config)
    app = build_app(runtime)
    with TestClient(app) as test_client:
        text = test_client.get("/admin/health", headers=AUTH).text
    runtime.close()
    assert "rethinkdb" in text  # the full report
    assert "hunter2-secret" not in text
    assert "unleash-secret" not in text
    assert TOKEN not in text


# -- the console's files --------------------------------------------------------------------
def test_console_is_served_with_a_strict_policy_and_no_secrets(client: TestClient) -> None:
    page = client.get("/console")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert TOKEN not in page.text
    for name in ("app.js", "console.css"):
        asset = client.get(f"/console/static/{name}")
        assert asset.status_code == 200
        assert TOKEN not in asset.text
    assert client.get("/console/static/routes.py").status_code == 404
    assert client.get("/console/static/..%2Froutes.py").status_code == 404


def test_rollout_plan_is_reported_behind_the_token(client: TestClient, rt: Runtime) -> None:
    """No plan, then a recorded one: the admin API shows its waves; unknown entity 404."""
    from flags.rollout import PlanSpec, Rollout

    headers = AUTH
    assert client.get("/admin/rollout/orders").status_code == 401
    empty = client.get("/admin/rollout/orders", headers=headers)
    assert empty.status_code == 200 and empty.json()["plan"] is None
    rollout = Rollout(rt)
    rollout.plan("orders", PlanSpec((10, 100), bake_s=60.0))
    shown = client.get("/admin/rollout/orders", headers=headers).json()
    assert shown["plan"] is not None, shown
    assert "10" in json.dumps(shown) and "100" in json.dumps(shown)
    assert client.get("/admin/rollout/nope", headers=headers).status_code == 404
