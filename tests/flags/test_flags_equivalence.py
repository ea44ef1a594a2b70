"""The embedded file backend and a real Unleash server give the same stages for the
same sequence of changes, evaluated by the same SDK."""

from __future__ import annotations

import time
from typing import Any

import httpx

from flags.evaluator import StageReader
from flags.file_backend import load_snapshot
from flags.service import FlagService
from flags.stages import Stage, flag_name
from stores.runtime import Runtime

STEPS: list[tuple[str, str, str | None]] = [
    ("set", "client-000", "shadow"),
    ("set", "client-001", "new"),
    ("set", "client-000", "new"),  # shadow -> new
    ("set", "client-002", "shadow"),
    ("rollback", "client-001", None),
    ("set", "client-001", "shadow"),
    ("set", "client-000", "shadow"),  # new -> shadow
    ("kill", "", None),
    ("set", "client-003", "new"),
    ("cohort", "shadow", "60"),
    ("cohort", "new", "30"),
    ("except", "client-002", "old"),
    ("cohort", "new", "100"),  # everyone but the held client
    ("except", "client-001", "shadow"),
    ("release", "client-002", None),
    ("cohort", "new", "0"),
    ("kill", "", None),
]
#: What some steps must give, beyond both backends agreeing (ids not in any store
#: follow the cohorts too: at 100% every id but the held ones reads new).
AFTER: dict[int, dict[str, Stage]] = {
    8: {"client-003": Stage.NEW, "client-000": Stage.OLD, "CLIENT-000": Stage.OLD},
    12: {"client-002": Stage.OLD, "client-000": Stage.NEW, "someone-else": Stage.NEW},
    13: {"client-001": Stage.SHADOW, "client-002": Stage.OLD, "client-003": Stage.NEW},
    14: {"client-002": Stage.NEW, "client-001": Stage.SHADOW},
    16: {p: Stage.OLD for p in ("client-000", "client-001", "client-002", "client-003")},
}
PROBES = [
    "client-000",
    "client-001",
    "client-002",
    "client-003",
    "CLIENT-000",
    "client-000 ",
    "client-00",
    "someone-else",
]
WAIT_S = 15.0  # only to avoid hanging; propagation speed is benchmarked separately


def _apply(service: FlagService, entity: str, step: tuple[str, str, str | None]) -> None:
    action, what, arg = step
    if action == "set":
        assert arg is not None
        service.set_stage(entity, what, arg, actor="t", force=True)
    elif action == "rollback":
        service.rollback(entity, what, actor="t")
    elif action == "cohort":
        assert arg is not None
        service.set_cohort(entity, what, int(arg), actor="t", force=True)
    elif action == "except":
        service.hold(entity, what, arg or "old", actor="t", force=True)
    elif action == "release":
        service.release(entity, what, actor="t", force=True)
    else:
        service.kill(entity, actor="t")


def _stages(reader: StageReader, entity: str) -> dict[str, Stage]:
    return {p: reader.stage(entity, p) for p in PROBES}


Summary = dict[str, tuple[bool, list[tuple[str, str, str, str, list[str]]]]]


def _served_flags(runtime: Runtime, entity: str) -> Summary:
    """What the SDK receives from Unleash for the entity's flags: on/off, and each
    strategy's rollout, stickiness, groupId and constraint (operator, values)."""
    s = runtime.settings
    assert s.unleash_url and s.unleash_backend_token
    body = httpx.get(
        f"{s.unleash_url}/api/client/features",
        timeout=5,
        headers={"Authorization": s.unleash_backend_token.get_secret_value()},
    ).json()
    return _summary(body, entity)


def _summary(body: dict[str, Any], entity: str) -> Summary:
    names = {flag_name(entity, s) for s in (Stage.SHADOW, Stage.NEW)}
    out = {}
    for f in body["features"]:
        if f["name"] in names:
            strategies = sorted(
                (
                    st["parameters"]["rollout"],
                    st["parameters"]["stickiness"],
                    st["parameters"]["groupId"],
                    c["operator"],
                    sorted(c["values"]),
                )
                for st in f.get("strategies", [])
                for c in st.get("constraints") or [{"operator": "", "values": []}]
            )
            out[f["name"]] = (bool(f["enabled"]), strategies)
    return out


def test_file_backend_and_unleash_agree_step_by_step(
    unleash_runtime: Runtime, file_runtime: Runtime, orders: str, seed_both
) -> None:
    seed_both(unleash_runtime, orders, clients=4)
    seed_both(file_runtime, orders, clients=4)
    on_server, on_file = FlagService(unleash_runtime), FlagService(file_runtime)
    server_reader = StageReader(unleash_runtime.settings)
    file_reader = StageReader(file_runtime.settings)
    try:
        server_reader.wait_ready(10)
        for number, step in enumerate(STEPS):
            _apply(on_server, orders, step)
            _apply(on_file, orders, step)
            truth = on_server.backend.read(orders)
            assert truth == on_file.backend.read(orders), step  # same definitions
            expected = {p: truth.stage_of(p) for p in PROBES}
            deadline = time.monotonic() + WAIT_S
            while _stages(server_reader, orders) != expected and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _stages(server_reader, orders) == expected, step
            assert _stages(file_reader, orders) == expected, step
            file_doc = load_snapshot(file_runtime.settings.state_dir / "flags" / "flags.json")
            # The server refreshes its client-features cache on its own (~1 s after an
            # admin write), independently of what the probes above could tell apart.
            on_file_doc = _summary(file_doc, orders)
            deadline = time.monotonic() + WAIT_S
            while _served_flags(unleash_runtime, orders) != on_file_doc:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert _served_flags(unleash_runtime, orders) == on_file_doc, step
            seen = _stages(file_reader, orders)
            assert {p: seen[p] for p in AFTER.get(number, {})} == AFTER.get(number, {}), step
    finally:
        server_reader.close()
        file_reader.close()
        on_server.close()
        on_file.close()
