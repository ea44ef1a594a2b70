"""Migrated when first used: reads through the API start each client's job, once.

Twenty clients live only in the old store (RethinkDB, the stand-in reqlite). Two API
processes (two apps, each on its own runtime) serve reads of every client several
times with first-use jobs on, while two job workers run; a third app with the setting
off serves the same reads as the reference. What happens to the data: every client is
copied exactly once and ends ``verified``, each client's job was published once over
both APIs, and every response is the one the reference app gives.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
from fastapi.testclient import TestClient
from jobs_support import JobsWorld, documents, history

from app.main import create_app
from backfill import jobs, ledger
from backfill.sources import RethinkSource
from core.settings import Settings
from stores.runtime import Runtime

CLIENTS = 20


def _options(**values: Any) -> Settings:
    return Settings(_env_file=None, shadow_recheck_delay_s=0.05, **values)  # type: ignore[call-arg]


def _reads(api: TestClient, clients: list[str], keys: dict[str, str]) -> Iterator[httpx.Response]:
    for client in clients:
        yield api.get(f"/v1/orders/{client}/items", params={"limit": 3})
        yield api.get(f"/v1/orders/{client}/items/{keys[client]}")


def _same(got: httpx.Response, want: httpx.Response) -> None:
    assert (got.status_code, got.json()) == (want.status_code, want.json())
    assert got.headers["X-Cutover-Stage"] == want.headers["X-Cutover-Stage"] == "old"


def test_reads_of_unmigrated_clients_start_one_job_each(jobs_world: JobsWorld) -> None:
    w = jobs_world
    rt = w.runtime
    rows = history(w.entity, clients=CLIENTS, ids=4, delete_rate=0)
    rt.rethink.ensure_tables()
    rt.rethink.insert_documents(w.entity, documents(w.entity, rows))
    clients = sorted({r.client_id for r in rows.values()})
    keys = {r.client_id: r.key for r in rows.values()}
    sql = rt.sql

    def runtime() -> Runtime:
        return w.new_runtime()

    with ExitStack() as stack:
        reference = stack.enter_context(TestClient(create_app(runtime(), options=_options())))
        apis = [
            stack.enter_context(
                TestClient(create_app(runtime(), options=_options(first_use_jobs=True)))
            )
            for _ in range(2)
        ]
        workers = [
            stack.enter_context(w.worker(RethinkSource(runtime().rethink, page_size=50)))
            for _ in range(2)
        ]
        expected = list(_reads(reference, clients, keys))
        for _ in range(3):  # every client read several times, through both APIs
            for api in apis:
                for got, want in zip(_reads(api, clients, keys), expected, strict=True):
                    _same(got, want)
        for api in apis:
            assert api.app.state.services.first_use.drain(30)  # type: ignore[attr-defined]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if sum(wk.finished for wk in workers) >= CLIENTS:
                break
            time.sleep(0.1)
        assert {e.client: e.state for e in ledger.entries(sql, "orders")} == dict.fromkeys(
            clients, "verified"
        )
        # reads after the migration publish nothing more (the window) and still agree
        for got, want in zip(_reads(apis[0], clients, keys), expected, strict=True):
            _same(got, want)
        assert apis[0].app.state.services.first_use.drain(30)  # type: ignore[attr-defined]
        metrics = apis[1].get("/metrics").text
        settled: dict[str, int] = {}
        for wk in workers:
            for k, n in wk.settled.items():
                settled[k] = settled.get(k, 0) + n
    assert settled == {"done": CLIENTS}  # one job per client, no duplicate delivered
    table = {r["client"]: r for r in jobs.jobs_of(sql, "orders")}
    assert {c: (table[c]["enqueues"], table[c]["copies"]) for c in clients} == dict.fromkeys(
        clients, (1, 1)
    )
    assert all(table[c]["reason"] == "first-use" for c in clients)
    held = {r.key for r in sql.scan(w.entity, None, include_deleted=False)}
    assert held == set(rows)  # every row copied, nothing else
    assert f'cutover_jobs{{entity="orders",state="done"}} {float(CLIENTS)}' in metrics


def test_a_jobs_topic_that_is_missing_never_fails_a_read(jobs_world: JobsWorld) -> None:
    from subscribers.manage import drop

    w = jobs_world
    rt = w.runtime
    rows = history(w.entity, clients=2, ids=3, delete_rate=0)
    rt.rethink.ensure_tables()
    rt.rethink.insert_documents(w.entity, documents(w.entity, rows))
    drop(rt, rt.cfg.jobs_or_error().subscription)  # the API's publishes now fail
    from core import pubsub

    pubsub.publisher(w.settings).delete_topic(
        topic=pubsub.topic_path(w.settings, rt.cfg.jobs_or_error().topic)
    )
    app = create_app(w.new_runtime(), options=_options(first_use_jobs=True))
    with TestClient(app) as api:
        for client in ("client-000", "client-001"):
            response = api.get(f"/v1/orders/{client}/items")
            assert response.status_code == 200 and len(response.json()["items"]) == 3
        assert app.state.services.first_use.drain(60)
        metrics = api.get("/metrics").text
    assert 'cutover_first_use_jobs_total{entity="orders",result="failed"}' in metrics
    # the claims were given back: a later enqueue may publish at once
    assert all(r["enqueued_at"] is None for r in jobs.jobs_of(rt.sql, "orders"))
