"""Stage orchestration on the embedded file backend: moves, audit, the legacy guard."""

from __future__ import annotations

import socket
from typing import Any

from core.settings import Settings
from flags.service import FlagService
from flags.stages import Stage
from flags.state import clients_reading_old_store
from stores.mapping import Row
from stores.runtime import Runtime


def test_moves_are_audited_and_repeats_are_no_ops(
    file_runtime: Runtime, orders: str, seed_both
) -> None:
    seed_both(file_runtime, orders, clients=2)
    service = FlagService(file_runtime)
    assert service.set_stage(orders, "client-000", Stage.SHADOW, actor="a", reason="pilot")
    assert service.set_stage(orders, "client-000", Stage.SHADOW, actor="a") is None
    service.set_stage(orders, "client-000", Stage.NEW, actor="b", force=True)
    flags = service.backend.read(orders)
    assert flags.stage_of("client-000") is Stage.NEW
    assert "client-000" not in flags.shadow.ids  # moved, not copied
    steps = [(c.from_stage, c.to_stage, c.actor) for c in service.audit.history(orders)]
    assert steps == [("old", "shadow", "a"), ("shadow", "new", "b")]
    report = service.status(orders)
    row = next(r for r in report.clients if r.client_id == "client-000")
    assert row.stage is Stage.NEW and row.last is not None and row.last.actor == "b"
    assert not row.changed_outside


def test_a_change_made_outside_cutover_is_flagged_in_status(
    file_runtime: Runtime, orders: str, seed_both
) -> None:
    """Someone edits the flag directly (as in Unleash's UI): status shows the real
    stage and marks it, since the audit does not explain it."""
    seed_both(file_runtime, orders, clients=2)
    service = FlagService(file_runtime)
    service.backend.ensure([orders])
    service.backend.write(orders, Stage.SHADOW, ["client-001"])
    row = next(r for r in service.status(orders).clients if r.client_id == "client-001")
    assert row.stage is Stage.SHADOW and row.changed_outside and row.last is None


def test_clients_reading_old_store_are_old_and_shadow_ones(
    file_runtime: Runtime, orders: str, seed_both
) -> None:
    seed_both(file_runtime, orders, clients=4)
    ent = file_runtime.cfg.entity(orders)
    file_runtime.rethink.write(
        ent, [Row("legacy-1", "rethink-only", 1, False, {c.name: None for c in ent.columns})]
    )
    service = FlagService(file_runtime)
    service.set_stage(orders, "client-000", Stage.SHADOW, actor="t")
    service.set_stage(orders, "client-001", Stage.NEW, actor="t", force=True)
    service.set_stage(orders, "pilot-x", Stage.NEW, actor="t", force=True)  # in no store
    assert clients_reading_old_store(file_runtime, orders) == [
        "client-000",
        "client-002",
        "client-003",
        "rethink-only",
    ]
    service.kill(orders, actor="t")
    assert "client-001" in clients_reading_old_store(file_runtime, orders)


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def test_rollback_works_with_the_sql_store_down_and_the_audit_catches_up(
    file_runtime: Runtime, orders: str, seed_both
) -> None:
    """The flag changes at once; the audit record waits in a local file and lands in
    the SQL store with the next command that reaches it. Nothing is lost."""
    seed_both(file_runtime, orders, clients=1)
    FlagService(file_runtime).set_stage(orders, "client-000", Stage.SHADOW, actor="t")
    values: dict[str, Any] = {
        **file_runtime.settings.model_dump(),
        "sql_dsn": f"DRIVER={{PostgreSQL Unicode}};SERVER=127.0.0.1;PORT={_closed_port()};"
        "DATABASE=x;UID=postgres;PWD=;",
        "sql_dialect": "postgresql",
    }
    down = Runtime(Settings(_env_file=None, **values), file_runtime.cfg)
    change = FlagService(down).rollback(orders, "client-000", actor="oncall", reason="incident")
    assert change is not None and change.to_stage == "old"
    up = FlagService(file_runtime)
    assert up.backend.read(orders).stage_of("client-000") is Stage.OLD
    assert up.audit.pending_path.exists()
    up.status(orders)  # any command reaching the store moves the parked records
    assert not up.audit.pending_path.exists()
    last = up.audit.history(orders)[-1]
    assert (last.id, last.actor, last.reason) == (change.id, "oncall", "incident")
