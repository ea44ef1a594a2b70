"""The admin API's subscriptions answer carries each failure log's size, its oldest
entry and the declared retention, as the SQL store holds them (SQLite and PostgreSQL),
with the server side from a real Pub/Sub server."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support import insert_failures

from app.main import create_app
from core.config import Config
from core.settings import Settings
from cutover import services
from stores.runtime import Runtime
from subscribers import retention
from subscribers.tables import TABLES

TOKEN = "failure-log-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = datetime(2024, 3, 1, 8, 30, 15, 123456, tzinfo=UTC)


def test_subscriptions_show_failure_log_size_oldest_entry_and_retention(
    store_settings: Callable[..., Settings],
    config: Config,
    pubsub_server: services.ServiceInfo,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three entries on orders-sqlstore (one open, two replayed), one on a subscription
    no config declares: the answer counts each status, dates the oldest entry by its
    first failure, and shows the declared retention; a subscription with no entry has
    an empty log. A purge then shrinks what the answer shows."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_server.url)
    sub = config.subscription("orders-sqlstore").model_copy(
        update={"failure_retention_days_replayed": 7}
    )
    cfg = config.model_copy(update={"subscriptions": {**config.subscriptions, sub.name: sub}})
    rt = Runtime(store_settings(admin_token=TOKEN, pubsub_emulator_host=pubsub_server.url), cfg)
    rt.sql.ensure_schema(TABLES)
    day = timedelta(days=1)
    insert_failures(
        rt.sql,
        [
            {"subscription": sub.name, "message_id": "m-open", "status": "open",
             "first_seen": T0 + 3 * day, "last_seen": T0 + 9 * day},
            {"subscription": sub.name, "message_id": "m-first", "status": "replayed",
             "first_seen": T0, "last_seen": T0 + day, "resolved_at": T0 + 2 * day},
            {"subscription": sub.name, "message_id": "m-later", "status": "replayed",
             "first_seen": T0 + 5 * day, "last_seen": T0 + 5 * day,
             "resolved_at": datetime.now(UTC)},
            {"subscription": "gone-sub", "message_id": "m-x", "status": "open",
             "first_seen": T0, "last_seen": T0},
        ],
    )  # fmt: skip

    def rows() -> dict[str, dict[str, Any]]:
        with TestClient(create_app(rt)) as client:
            answer = client.get("/admin/subscriptions", headers=AUTH)
        assert answer.status_code == 200, answer.text
        assert answer.json()["counts_error"] is None
        return {s["name"]: s for s in answer.json()["subscriptions"]}

    health = rows()
    orders = health["orders-sqlstore"]
    assert orders["failure_log_size"] == 1  # open entries, what a replay takes
    assert orders["failure_log"] == {
        "entries": 3,
        "open": 1,
        "replayed": 2,
        "oldest_at": T0.isoformat(),
        "retention_days": {"replayed": 7, "open": 0},
    }
    assert health["customers-sqlstore"]["failure_log"] == {
        "entries": 0,
        "open": 0,
        "replayed": 0,
        "oldest_at": None,
        "retention_days": {"replayed": 30, "open": 0},
    }

    plan = retention.plan(cfg, ["orders-sqlstore"], now=datetime.now(UTC))
    assert retention.purge(rt.sql, plan).deleted == 1  # m-first: replayed long ago
    after = rows()["orders-sqlstore"]["failure_log"]
    assert (after["entries"], after["open"], after["replayed"]) == (2, 1, 1)
    assert after["oldest_at"] == (T0 + 3 * day).isoformat()
    rt.close()
