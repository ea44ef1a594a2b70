"""Stage flags in a real Unleash server: Admin API writes, SDK evaluation, the traps."""

from __future__ import annotations

import multiprocessing
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from core.settings import Settings
from flags.evaluator import StageReader
from flags.service import FlagService
from flags.stages import FlagError, Stage, flag_name
from flags.unleash_admin import UnleashAdmin
from stores.runtime import Runtime

PROPAGATION_WAIT_S = 10.0  # generous: only to avoid hanging; speed is benchmarked apart


@pytest.fixture
def admin(unleash_settings: Settings) -> Iterator[UnleashAdmin]:
    backend = UnleashAdmin.from_settings(unleash_settings)
    yield backend
    backend.close()


def _raw(settings: Settings) -> httpx.Client:
    assert settings.unleash_url and settings.unleash_admin_token
    return httpx.Client(
        base_url=settings.unleash_url,
        timeout=5,
        headers={"Authorization": settings.unleash_admin_token.get_secret_value()},
    )


def _env(settings: Settings, flag: str) -> dict[str, Any]:
    with _raw(settings) as http:
        r = http.get(f"/api/admin/projects/default/features/{flag}/environments/development")
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body


def wait_for(predicate: Any, timeout: float = PROPAGATION_WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def test_ensure_creates_context_field_and_both_flags_idempotently(
    admin: UnleashAdmin, unleash_settings: Settings, orders: str
) -> None:
    admin.ensure([orders])
    admin.ensure([orders])  # second time: no error, no duplicate
    with _raw(unleash_settings) as http:
        assert http.get("/api/admin/context/clientId").status_code == 200
    for stage in (Stage.SHADOW, Stage.NEW):
        env = _env(unleash_settings, flag_name(orders, stage))
        assert env["enabled"] is False and env["strategies"] == []


def test_writing_ids_constrains_first_and_removing_the_last_switches_off(
    admin: UnleashAdmin, unleash_settings: Settings, orders: str
) -> None:
    """The flag is on only with a clientId IN strategy; [] is never sent (Unleash
    rejects it): the environment goes off and the strategy is deleted instead."""
    flag = flag_name(orders, Stage.NEW)
    admin.ensure([orders])
    admin.write(orders, Stage.NEW, ["b", "a"])
    env = _env(unleash_settings, flag)
    assert env["enabled"] is True
    (strategy,) = env["strategies"]
    assert strategy["constraints"][0]["values"] == ["a", "b"]
    assert strategy["constraints"][0]["caseInsensitive"] is False

    admin.write(orders, Stage.NEW, ["a"])
    assert [s["constraints"][0]["values"] for s in _env(unleash_settings, flag)["strategies"]] == [
        ["a"]
    ]

    admin.write(orders, Stage.NEW, [])
    env = _env(unleash_settings, flag)
    assert env["enabled"] is False and env["strategies"] == []
    assert admin.read(orders).stage_of("a") is Stage.OLD


def test_a_loose_strategy_added_in_the_ui_is_never_switched_on(
    admin: UnleashAdmin, unleash_settings: Settings, orders: str
) -> None:
    """Someone adds a strategy without constraint in Unleash's UI while the flag is
    off: cutover refuses to switch the flag on (it would move every client) and the
    status warns; the flag stays off."""
    flag = flag_name(orders, Stage.NEW)
    admin.ensure([orders])
    with _raw(unleash_settings) as http:
        http.post(
            f"/api/admin/projects/default/features/{flag}/environments/development/strategies",
            json={
                "name": "flexibleRollout",
                "constraints": [],
                "parameters": {"rollout": "100", "stickiness": "default", "groupId": flag},
            },
        ).raise_for_status()
    with pytest.raises(FlagError, match="without a clientId constraint"):
        admin.write(orders, Stage.NEW, ["a"])
    assert _env(unleash_settings, flag)["enabled"] is False
    assert any("would switch every client" in w for w in admin.read(orders).warnings())


def test_sdk_matches_ids_exactly(unleash_runtime: Runtime, orders: str, seed_both) -> None:
    seed_both(unleash_runtime, orders, clients=2)
    service = FlagService(unleash_runtime)
    service.set_stage(orders, "client-001", Stage.SHADOW, actor="t")
    reader = StageReader(unleash_runtime.settings)
    try:
        assert reader.wait_ready(10)
        assert wait_for(lambda: reader.stage(orders, "client-001") is Stage.SHADOW)
        for other in ("CLIENT-001", " client-001", "client-001 ", "client-00", "client-000"):
            assert reader.stage(orders, other) is Stage.OLD, other
    finally:
        reader.close()
        service.close()


def _hung_server() -> tuple[socket.socket, list[socket.socket]]:
    """A TCP server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return server, held


def test_a_hung_server_at_start_up_never_blocks_a_request(
    make_settings: Any, unleash_settings: Settings
) -> None:
    """Unleash accepts but never answers: stages are answered at once (``old``, the
    safe default with no snapshot), readiness is bounded, nothing raises."""
    server, held = _hung_server()
    port = server.getsockname()[1]
    settings = unleash_settings.model_copy(
        update={"unleash_url": f"http://127.0.0.1:{port}", "unleash_request_timeout_s": 30.0}
    )
    reader = StageReader(settings)
    try:
        started = time.monotonic()
        assert reader.stage("orders", "client-000") is Stage.OLD
        assert reader.wait_ready(0.2) is False
        assert time.monotonic() - started < 5  # far below the 30 s request timeout
    finally:
        server.close()
        for conn in held:
            conn.close()
        reader.close()


def test_a_cold_start_while_unleash_is_down_serves_the_last_snapshot(
    unleash_runtime: Runtime, orders: str, seed_both
) -> None:
    seed_both(unleash_runtime, orders, clients=2)
    service = FlagService(unleash_runtime)
    service.set_stage(orders, "client-000", Stage.SHADOW, actor="t")
    first = StageReader(unleash_runtime.settings)
    try:
        first.wait_ready(10)
        assert wait_for(lambda: first.stage(orders, "client-000") is Stage.SHADOW)
    finally:
        first.close()
        service.close()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    down_url = f"http://127.0.0.1:{dead.getsockname()[1]}"  # bound, not listening
    cold = StageReader(unleash_runtime.settings.model_copy(update={"unleash_url": down_url}))
    try:
        assert cold.stage(orders, "client-000") is Stage.SHADOW
        assert cold.stage(orders, "client-001") is Stage.OLD
    finally:
        cold.close()
        dead.close()


def _child(reader: StageReader, entity: str, out: Any) -> None:
    """In the forked child: wait until the change made after the fork is seen."""
    deadline = time.monotonic() + PROPAGATION_WAIT_S
    stage = reader.stage(entity, "client-000")
    while stage is not Stage.NEW and time.monotonic() < deadline:
        time.sleep(0.05)
        stage = reader.stage(entity, "client-000")
    out.put(stage.value)


def test_a_forked_worker_makes_its_own_client_and_sees_changes(
    unleash_runtime: Runtime, orders: str, seed_both
) -> None:
    """A reader used before a fork: the child's inherited SDK client has no polling
    thread and would serve the pre-fork state forever; the reader rebuilds it."""
    seed_both(unleash_runtime, orders, clients=1)
    service = FlagService(unleash_runtime)
    service.ensure_schema()
    reader = StageReader(unleash_runtime.settings)
    try:
        reader.wait_ready(10)
        assert reader.stage(orders, "client-000") is Stage.OLD
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        child = ctx.Process(target=_child, args=(reader, orders, out))
        child.start()
        service.set_stage(orders, "client-000", Stage.NEW, actor="t", force=True)
        assert out.get(timeout=PROPAGATION_WAIT_S + 20) == "new"
        child.join(10)
    finally:
        reader.close()
        service.close()
