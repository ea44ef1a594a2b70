"""Stages for any number of clients, against the real Unleash server and the file backend.

Synthetic clients exist only in the backfill ledger (verified clean unless a test says
otherwise): that makes them known to cutover, so cohort steps are computed and gated
over them, without writing entity rows for tens of thousands of clients.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from flags_support import cli_env, seed_ledger

from core.config import ConfigError
from core.settings import Settings
from cutover.cli import cli
from flags.evaluator import StageReader
from flags.gate import BulkGateRefused, GateRefused
from flags.service import FlagService
from flags.stages import (
    FlagError,
    ListLimitError,
    PercentError,
    Stage,
    StageRule,
    StageRules,
    flag_name,
)
from flags.unleash_admin import UnleashAdmin
from stores.runtime import Runtime
from stores.sql import StoreUnavailable

WAIT_S = 20.0  # only to avoid hanging: a wrong stage fails the comparison at the end
#: Rollback propagation allowed here: the issue's bound ("as today": about two refresh
#: intervals, 0.5 s each by default), made generous for a loaded 2-core CI machine.
ROLLBACK_BOUND_S = 5.0


def _runtime(request: pytest.FixtureRequest, backend: str) -> Runtime:
    rt: Runtime = request.getfixturevalue(f"{backend}_runtime")
    return rt


def _stages(reader: StageReader, entity: str, clients: list[str]) -> dict[str, Stage]:
    return {c: reader.stage(entity, c) for c in clients}


def _until(reader: StageReader, entity: str, expected: dict[str, Stage]) -> dict[str, Stage]:
    """What the reader serves, once it serves ``expected`` (or when WAIT_S is up)."""
    clients = list(expected)
    deadline = time.monotonic() + WAIT_S
    seen = _stages(reader, entity, clients)
    while seen != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        seen = _stages(reader, entity, clients)
    return seen


def _differ(a: dict[str, Stage], b: dict[str, Stage]) -> list[tuple[str, Stage, Stage]]:
    return [(c, a[c], b[c]) for c in a if a[c] is not b[c]][:10]


def _served(settings: Settings, entity: str) -> list[dict[str, Any]]:
    """The entity's flags exactly as every SDK polls them from Unleash."""
    assert settings.unleash_url and settings.unleash_backend_token
    body = httpx.get(
        f"{settings.unleash_url}/api/client/features",
        timeout=5,
        headers={"Authorization": settings.unleash_backend_token.get_secret_value()},
    ).json()
    names = {flag_name(entity, s) for s in (Stage.SHADOW, Stage.NEW)}
    return [f for f in body["features"] if f["name"] in names]


def _values(features: list[dict[str, Any]]) -> int:
    return sum(
        len(c.get("values") or [])
        for f in features
        for st in f.get("strategies") or []
        for c in st.get("constraints") or []
    )


# -- cutover's membership is the SDK's ----------------------------------------------------
def test_computed_membership_equals_the_sdk_against_unleash_id_by_id(
    unleash_runtime: Runtime, orders: str
) -> None:
    """10,000 clients through growing cohorts (several percentages of both stages),
    pilot lists and holds: for every id, the stage cutover computes from the flags equals
    what the SDK answers from the real server, and each step's plan (what the gate
    checked) is exactly the set of clients whose SDK answer changed."""
    clients = [f"tenant-{i:05d}" for i in range(10_000)]
    seed_ledger(unleash_runtime, orders, clients)
    service = FlagService(unleash_runtime)
    reader = StageReader(unleash_runtime.settings)
    steps: list[tuple[str, Any, Any]] = [
        ("cohort", Stage.NEW, 1),
        ("cohort", Stage.SHADOW, 20),
        ("cohort", Stage.NEW, 10),
        ("hold", clients[3], Stage.OLD),
        ("hold", clients[5], Stage.SHADOW),
        ("set", clients[7], Stage.NEW),
        ("cohort", Stage.SHADOW, 60),
        ("cohort", Stage.NEW, 33),
        ("cohort", Stage.NEW, 99),
        ("cohort", Stage.NEW, 50),  # down: no gate, back to shadow
        ("cohort", Stage.SHADOW, 100),
        ("cohort", Stage.NEW, 100),
    ]
    try:
        assert reader.wait_ready(10)
        before = _stages(reader, orders, clients)
        assert set(before.values()) == {Stage.OLD}
        for action, what, arg in steps:
            plan = None
            if action == "cohort":
                plan = service.set_cohort(orders, what, arg, actor="t")
                assert plan.applied
            elif action == "hold":
                service.hold(orders, what, arg, actor="t")
            else:
                service.set_stage(orders, what, arg, actor="t")
            flags = service.backend.read(orders)
            computed = {c: flags.stage_of(c) for c in clients}
            sdk = _until(reader, orders, computed)
            assert sdk == computed, (action, what, arg, _differ(sdk, computed))
            if plan is not None:
                changed = {c for c in clients if sdk[c] is not before[c]}
                assert set(plan.moves) == changed, (what, arg)
                assert plan.to_new == sorted(c for c in changed if sdk[c] is Stage.NEW)
                assert not plan.blocked
            before = sdk
        counts = Counter(before.values())
        assert counts == {Stage.NEW: 9_998, Stage.SHADOW: 1, Stage.OLD: 1}
    finally:
        reader.close()
        service.close()


# -- 20,000 clients in new, exceptions, a rollback at 100% -------------------------------
@pytest.mark.parametrize("backend", ["file", "unleash"])
def test_twenty_thousand_clients_at_100_percent_new_with_exceptions_and_a_rollback(
    backend: str, request: pytest.FixtureRequest, orders: str
) -> None:
    """A cohort at 100% puts 19,997 of 20,000 clients in new (3 held back); one more is
    then rolled back: it reads old within the propagation bound while every other client
    keeps its stage. The flags stay small: only the 4 exceptions are listed (plus the one
    held at shadow), whatever the number of clients switched. Then kill: everyone old."""
    rt = _runtime(request, backend)
    clients = [f"c{i:05d}" for i in range(20_000)]
    seed_ledger(rt, orders, clients)
    service = FlagService(rt)
    reader = StageReader(rt.settings)
    held_old, held_shadow, rolled = clients[:2], clients[2], clients[12_345]
    try:
        assert reader.wait_ready(10)
        for client in held_old:
            service.hold(orders, client, Stage.OLD, actor="t", reason="noisy tenant")
        service.hold(orders, held_shadow, Stage.SHADOW, actor="t")
        plan = service.set_cohort(orders, Stage.NEW, 100, actor="t", reason="everyone")
        assert len(plan.to_new) == 19_997 and not plan.blocked
        expected = {c: Stage.NEW for c in clients}
        expected.update({c: Stage.OLD for c in held_old} | {held_shadow: Stage.SHADOW})
        served = _until(reader, orders, expected)
        assert served == expected, _differ(served, expected)

        t0 = time.monotonic()
        change = service.rollback(orders, rolled, actor="oncall", reason="incident")
        assert change is not None and (change.from_stage, change.to_stage) == ("new", "old")
        while reader.stage(orders, rolled) is not Stage.OLD and time.monotonic() - t0 < WAIT_S:
            time.sleep(0.02)
        took = time.monotonic() - t0
        assert reader.stage(orders, rolled) is Stage.OLD
        assert took <= ROLLBACK_BOUND_S, f"rollback took {took:.2f} s to reach the reader"
        expected[rolled] = Stage.OLD
        served = _stages(reader, orders, clients)
        assert served == expected, _differ(served, expected)

        flags = service.backend.read(orders)
        assert flags.new.rule == StageRule(
            percent=100, excepted=frozenset([*held_old, held_shadow, rolled])
        )
        if backend == "unleash":
            features = _served(rt.settings, orders)
            # new: 4 exceptions; shadow: 3 held at old excepted, 1 listed at shadow.
            assert _values(features) == 8
        status = service.status(orders)
        assert status.counts == {"old": 3, "shadow": 1, "new": 19_996}
        assert status.rules is not None and set(status.rules.exceptions()) == {
            *held_old,
            held_shadow,
            rolled,
        }
        assert not any(c.changed_outside for c in status.clients)

        killed = service.kill(orders, actor="t")
        assert len(killed) == 19_997  # every client that was not old
        assert service.backend.read(orders).stage_of(clients[100]) is Stage.OLD
        assert [(s.stage, s.from_percent, s.to_percent) for s in service.audit.steps(orders)] == [
            ("new", 0, 100),
            ("new", 100, 0),
        ]
    finally:
        reader.close()
        service.close()


# -- limits -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["file", "unleash"])
def test_a_list_over_the_limit_is_refused_with_the_limit_named_and_nothing_changes(
    backend: str, request: pytest.FixtureRequest, orders: str
) -> None:
    """250 ids fill a list (Unleash's default UNLEASH_CONSTRAINT_VALUES_LIMIT); the 251st
    pilot client and the 251st held-back client are refused before anything is written,
    saying to use a cohort (or lower it); the flags and the audit stay as they were."""
    rt = _runtime(request, backend)
    service = FlagService(rt)
    try:
        assert service.backend.list_limit() == 250  # read from the server's UI config
        pilots = [f"p{i:03d}" for i in range(250)]
        service.backend.ensure([orders])
        service.backend.write(orders, Stage.NEW, pilots)
        before = service.backend.read(orders)
        with pytest.raises(ListLimitError, match=r"251 clients, over the server's limit of 250"):
            service.set_stage(orders, "p250", Stage.NEW, actor="t", force=True)
        with pytest.raises(ListLimitError, match=rf"flags cohort {orders} new PERCENT"):
            service.set_stage(orders, "p250", Stage.NEW, actor="t", force=True)
        assert service.backend.read(orders) == before

        held = frozenset(f"h{i:03d}" for i in range(250))
        service.backend.apply(orders, Stage.SHADOW, StageRule(percent=100, excepted=held))
        before = service.backend.read(orders)
        with pytest.raises(ListLimitError, match=r"exceptions would hold 251 clients.*--release"):
            service.hold(orders, "h250", Stage.OLD, actor="t", force=True)
        assert service.backend.read(orders) == before
        service.ensure_schema()
        assert service.audit.history(orders) == []
    finally:
        service.close()


def test_the_cli_names_the_limit_and_exits_2(
    tmp_path: Path, file_runtime: Runtime, orders: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    service = FlagService(file_runtime)
    service.backend.ensure([orders])
    service.backend.write(orders, Stage.SHADOW, [f"p{i:03d}" for i in range(250)])
    before = service.backend.read(orders)
    out = CliRunner().invoke(
        cli,
        ["flags", "set", orders, "p250", "shadow", "--force"],
        env=cli_env(tmp_path, file_runtime),
    )
    assert out.exit_code == 2, out.output
    assert "limit of 250 values per constraint" in out.output and "flags cohort" in out.output
    assert service.backend.read(orders) == before


# -- the gate covers bulk moves exactly -------------------------------------------------
def test_the_gate_refuses_a_cohort_containing_one_unverified_client_and_names_it(
    tmp_path: Path, file_runtime: Runtime, orders: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """400 known clients, one never verified in the 10% cohort: the step is refused, the
    message names it and how many block, the file lists it, and nothing changes. Held
    back, the same step passes and switches every other client of the cohort."""
    rules = StageRules(orders)
    clients = [f"k{i:03d}" for i in range(400)]
    cohort = [c for c in clients if rules.bucket(c) <= 10]
    bad = cohort[len(cohort) // 2]
    seed_ledger(file_runtime, orders, clients, unverified={bad})
    service = FlagService(file_runtime)
    with pytest.raises(BulkGateRefused) as refused:
        service.set_cohort(orders, Stage.NEW, 10, actor="t")
    message = str(refused.value)
    assert f"1 of the {len(cohort)} known clients" in message
    assert "never verified" in message and repr(bad) in message
    assert [c for c, _ in refused.value.blocked] == [bad]
    listed = Path(str(refused.value.path)).read_text().splitlines()
    assert listed[0] == "client\treason" and listed[1].startswith(f"{bad}\t")
    assert str(refused.value.path) in message
    assert service.backend.read(orders).new.rule.percent == 0
    assert service.audit.history(orders) == [] and service.audit.steps(orders) == []

    monkeypatch.chdir(tmp_path)
    env = cli_env(tmp_path, file_runtime)
    out = CliRunner().invoke(cli, ["flags", "cohort", orders, "new", "10"], env=env)
    assert out.exit_code == 2 and "error: refused: 1 of the" in out.output and bad in out.output
    dry = CliRunner().invoke(cli, ["flags", "cohort", orders, "new", "10", "--dry-run"], env=env)
    assert dry.exit_code == 0 and "blocked by the gate: 1 client(s)" in dry.output, dry.output

    service.hold(orders, bad, Stage.OLD, actor="t", reason="not verified yet")
    plan = service.set_cohort(orders, Stage.NEW, 10, actor="t")
    assert plan.applied and len(plan.to_new) == len(cohort) - 1
    flags = service.backend.read(orders)
    assert flags.stage_of(bad) is Stage.OLD
    assert {c for c in clients if flags.stage_of(c) is Stage.NEW} == set(cohort) - {bad}
    moved = [c for c in service.audit.history(orders) if "cohort new 0% -> 10%" in (c.reason or "")]
    assert len(moved) == len(cohort) - 1 and all(c.gate for c in moved)


def test_force_overrides_the_bulk_gate_and_is_audited_per_client(
    file_runtime: Runtime, orders: str
) -> None:
    clients = [f"k{i:03d}" for i in range(100)]
    seed_ledger(file_runtime, orders, clients, unverified=set(clients[:50]))
    service = FlagService(file_runtime)
    plan = service.set_cohort(orders, Stage.NEW, 100, actor="t", force=True, reason="drill")
    assert plan.applied and plan.forced and len(plan.blocked) == 50
    rows = {c.client_id: c for c in service.audit.history(orders)}
    assert all(
        rows[c].forced and "overridden with --force" in (rows[c].gate or "") for c in clients[:50]
    )
    assert not any(rows[c].forced for c in clients[50:])
    (step,) = service.audit.steps(orders)
    assert step.forced and step.blocked == 50 and step.switched == 100


# -- bad input ----------------------------------------------------------------------------
def test_bad_input_is_refused_clearly_and_changes_nothing(
    tmp_path: Path, file_runtime: Runtime, orders: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = FlagService(file_runtime)
    with pytest.raises(ConfigError, match="unknown entity 'nope'"):
        service.set_cohort("nope", Stage.NEW, 10)
    with pytest.raises(PercentError, match=r"outside 0\.\.100"):
        service.set_cohort(orders, Stage.NEW, 101)
    with pytest.raises(PercentError):
        service.set_cohort(orders, Stage.SHADOW, -1)
    monkeypatch.chdir(tmp_path)
    env = cli_env(tmp_path, file_runtime)
    runner = CliRunner()
    for args, said in [
        (["flags", "cohort", "nope", "new", "10"], "unknown entity 'nope'"),
        (["flags", "except", "nope", "acme"], "unknown entity 'nope'"),
        (["flags", "cohort", orders, "new", "101"], "101 is not in the range 0<=x<=100"),
        (["flags", "cohort", orders, "new", "--", "-1"], "-1 is not in the range 0<=x<=100"),
        (["flags", "cohort", orders, "old", "10"], "'old' is not one of"),
        (["flags", "except", orders, "acme", "--stage", "new"], "'new' is not one of"),
        (["flags", "except", orders, "ACME"], "unknown client 'ACME'"),
    ]:
        out = runner.invoke(cli, args, env=env)
        assert out.exit_code == 2 and said in out.output, (args, out.output)
    flags = service.backend.read(orders)
    assert flags.rules == StageRules(orders)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unleash_down_is_a_clear_error_and_changes_nothing(
    unleash_runtime: Runtime, orders: str
) -> None:
    clients = [f"k{i:03d}" for i in range(50)]
    seed_ledger(unleash_runtime, orders, clients)
    up = FlagService(unleash_runtime)
    up.set_cohort(orders, Stage.NEW, 10, actor="t")
    before = up.backend.read(orders)
    down_settings = unleash_runtime.settings.model_copy(
        update={"unleash_url": f"http://127.0.0.1:{_closed_port()}"}
    )
    down = FlagService(Runtime(down_settings, unleash_runtime.cfg))
    for attempt in (  # each reads the flags first: refused before any change
        lambda: down.set_cohort(orders, Stage.NEW, 50, actor="t"),
        lambda: down.hold(orders, clients[0], Stage.OLD, actor="t"),
        lambda: down.rollback(orders, clients[1], actor="t"),
        lambda: down.kill(orders, actor="t"),
    ):
        with pytest.raises(FlagError, match="unreachable"):
            attempt()
    assert up.backend.read(orders) == before
    assert len(up.audit.steps(orders)) == 1  # the one step made while it was up
    down.close()
    up.close()


def test_steps_down_and_kill_work_while_the_sql_store_is_down(
    file_runtime: Runtime, orders: str
) -> None:
    """An incident: the SQL store is unreachable. Raising a cohort is refused (the gate
    needs the ledger) and changes nothing; lowering it and the kill switch take effect
    at once, their records wait in the pending file and land with the next command."""
    clients = [f"k{i:03d}" for i in range(50)]
    seed_ledger(file_runtime, orders, clients)
    FlagService(file_runtime).set_cohort(orders, Stage.NEW, 40, actor="t")
    values: dict[str, Any] = {
        **file_runtime.settings.model_dump(),
        "sql_dsn": f"DRIVER={{PostgreSQL Unicode}};SERVER=127.0.0.1;PORT={_closed_port()};"
        "DATABASE=x;UID=postgres;PWD=;",
        "sql_dialect": "postgresql",
    }
    down = FlagService(Runtime(Settings(_env_file=None, **values), file_runtime.cfg))
    with pytest.raises(StoreUnavailable):
        down.set_cohort(orders, Stage.NEW, 60, actor="oncall")
    assert down.backend.read(orders).new.rule.percent == 40
    plan = down.set_cohort(orders, Stage.NEW, 10, actor="oncall", reason="incident")
    assert plan.applied and plan.unknown and plan.known == 0
    assert down.backend.read(orders).new.rule.percent == 10
    down.kill(orders, actor="oncall")
    assert down.backend.read(orders).rules == StageRules(orders)
    up = FlagService(file_runtime)
    assert up.audit.pending_path.exists()
    up.status(orders)  # reaches the store: the parked records move in
    steps = [(s.from_percent, s.to_percent, s.actor) for s in up.audit.steps(orders)]
    assert steps == [(0, 40, "t"), (40, 10, "oncall"), (10, 0, "oncall")]


class _DiesAfterOneWrite(UnleashAdmin):
    """The real Admin API for one flag write; then the server is gone."""

    def apply(self, entity: str, stage: Stage, rule: StageRule) -> None:
        super().apply(entity, stage, rule)
        self._http = httpx.Client(base_url=f"http://127.0.0.1:{_closed_port()}", timeout=1)


def test_unleash_lost_between_the_two_flags_of_a_move_is_reported_and_audited(
    unleash_runtime: Runtime, orders: str, seed_both: Any
) -> None:
    """A move back from new to shadow writes shadow first, then new. Unleash goes away
    in between: the error says which flag changed and where the client stands (still
    new: nothing it reads changed), and nothing is audited that did not happen."""
    seed_both(unleash_runtime, orders, clients=1)
    FlagService(unleash_runtime).set_stage(orders, "client-000", Stage.NEW, actor="t", force=True)
    dying = _DiesAfterOneWrite.from_settings(unleash_runtime.settings)
    service = FlagService(unleash_runtime, dying)
    with pytest.raises(
        FlagError, match=rf"Only {flag_name(orders, Stage.SHADOW)} had been changed"
    ) as err:
        service.set_stage(orders, "client-000", Stage.SHADOW, actor="t")
    assert "client-000 now reads new" in str(err.value)
    truth = FlagService(unleash_runtime).backend.read(orders)
    assert truth.stage_of("client-000") is Stage.NEW
    assert [c.to_stage for c in service.audit.history(orders)] == ["new"]

    # The same loss during a rollback (new first, then shadow): the client is out of
    # new at once, and that is audited, with what is left to finish.
    FlagService(unleash_runtime).set_stage(orders, "client-000", Stage.SHADOW, actor="t")
    FlagService(unleash_runtime).set_stage(orders, "client-000", Stage.NEW, actor="t", force=True)
    truth = FlagService(unleash_runtime).backend.read(orders)
    assert truth.shadow.rule.pilot == frozenset()  # moved, not copied
    service = FlagService(
        unleash_runtime, _DiesAfterOneWrite.from_settings(unleash_runtime.settings)
    )
    service.backend.apply(orders, Stage.SHADOW, StageRule(percent=100))  # shadow covers it
    service = FlagService(
        unleash_runtime, _DiesAfterOneWrite.from_settings(unleash_runtime.settings)
    )
    with pytest.raises(FlagError, match="now reads shadow"):
        service.rollback(orders, "client-000", actor="t")
    assert service.audit.history(orders)[-1].to_stage == "shadow"
    assert "(partly applied)" in (service.audit.history(orders)[-1].reason or "")


# -- edits made in Unleash's UI ------------------------------------------------------------
def test_a_cohort_edited_in_the_unleash_ui_is_shown_as_changed_outside(
    unleash_runtime: Runtime, orders: str
) -> None:
    clients = [f"k{i:03d}" for i in range(200)]
    seed_ledger(unleash_runtime, orders, clients)
    service = FlagService(unleash_runtime)
    service.set_cohort(orders, Stage.NEW, 10, actor="t")
    s = unleash_runtime.settings
    assert s.unleash_url and s.unleash_admin_token
    flag = flag_name(orders, Stage.NEW)
    env = f"/api/admin/projects/default/features/{flag}/environments/development"
    with httpx.Client(
        base_url=s.unleash_url,
        timeout=5,
        headers={"Authorization": s.unleash_admin_token.get_secret_value()},
    ) as http:
        (strat,) = http.get(env).json()["strategies"]
        strat["parameters"]["rollout"] = "30"
        http.put(f"{env}/strategies/{strat['id']}", json=strat).raise_for_status()
    status = service.status(orders)
    assert any(
        "cohort is at 30% but the last change cutover made set it to 10%" in w
        for w in status.warnings
    )
    rules = StageRules(orders)
    outside = {c.client_id for c in status.clients if c.changed_outside}
    assert outside == {c for c in clients if 10 < rules.bucket(c) <= 30}
    assert all(c.stage is Stage.NEW for c in status.clients if c.client_id in outside)


# -- the CLI's status at scale and the admin API ------------------------------------------
def test_status_summarises_lists_cohorts_and_counts_and_help_explains(
    tmp_path: Path, file_runtime: Runtime, orders: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With more than 50 known clients, status shows the rules and counts and lists only
    the clients a list names; --all and --json list every one."""
    clients = [f"k{i:03d}" for i in range(300)]
    seed_ledger(file_runtime, orders, clients)
    service = FlagService(file_runtime)
    service.set_cohort(orders, Stage.SHADOW, 50, actor="t")
    service.set_cohort(orders, Stage.NEW, 20, actor="t")
    service.set_stage(orders, clients[-1], Stage.NEW, actor="t")  # listed unless covered
    held = next(c for c in clients if service.backend.read(orders).stage_of(c) is Stage.NEW)
    service.hold(orders, held, Stage.OLD, actor="t", reason="slow tenant")
    counts = service.status(orders).counts
    monkeypatch.chdir(tmp_path)
    env = cli_env(tmp_path, file_runtime)
    runner = CliRunner()
    out = runner.invoke(cli, ["flags", "status", orders], env=env)
    assert out.exit_code == 0, out.output
    text = out.output
    assert (
        f"300 known clients: {counts['new']} new, {counts['shadow']} shadow, {counts['old']} old"
        in text
    )
    assert "new     cohort  20%" in text and "shadow  cohort  50%" in text
    assert f"exceptions: {held} (at old)" in text and "more clients follow the cohorts" in text
    rows = [ln for ln in text.splitlines() if ln.strip().startswith("k")]
    assert any(held in ln and "held" in ln and "slow tenant" in ln for ln in rows)
    assert len(rows) <= 2
    every = runner.invoke(cli, ["flags", "status", orders, "--all"], env=env)
    assert sum(ln.strip().startswith("k") for ln in every.output.splitlines()) == 300
    (doc,) = json.loads(runner.invoke(cli, ["flags", "status", orders, "--json"], env=env).output)
    assert doc["counts"] == counts and len(doc["clients"]) == 300
    assert doc["rules"]["new"]["percent"] == 20 and doc["rules"]["new"]["exceptions"] == [held]

    helps = {c: runner.invoke(cli, ["flags", c, "--help"]).output for c in ("cohort", "except")}
    assert "hash of the clientId" in helps["cohort"] and "--dry-run" in helps["cohort"]
    assert "writes all of them to a file" in helps["cohort"].replace("\n", " ").replace("  ", " ")
    assert "--release" in helps["except"] and "100% included" in helps["except"]


def test_the_admin_api_steps_cohorts_and_holds_through_the_same_gate(
    file_runtime: Runtime, orders: str
) -> None:
    """409 with the gate's reason (naming the unverified client) and nothing changed;
    held back through the API, the same step passes; bad percentages are 422."""
    from fastapi.testclient import TestClient
    from pydantic import SecretStr

    from app.api.routes import admin as admin_routes
    from app.main import create_app

    settings = file_runtime.settings.model_copy(update={"admin_token": SecretStr("tok-15")})
    rt = Runtime(settings, file_runtime.cfg)
    clients = [f"k{i:03d}" for i in range(100)]
    bad = clients[42]
    seed_ledger(rt, orders, clients, unverified={bad})
    app = create_app(rt)
    if not any(getattr(r, "path", "") == "/admin/overview" for r in app.routes):
        app.include_router(admin_routes.router)
    auth = {"Authorization": "Bearer tok-15"}
    base = f"/admin/flags/{orders}"
    with TestClient(app) as http:
        refused = http.post(f"{base}/cohort", headers=auth, json={"stage": "new", "percent": 100})
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"] == "GateRefused" and repr(bad) in refused.json()["reason"]
        assert http.get(base, headers=auth).json()["rules"]["new"]["percent"] == 0
        dry = http.post(
            f"{base}/cohort", headers=auth, json={"stage": "new", "percent": 100, "dry_run": True}
        ).json()
        assert (dry["applied"], dry["blocked"], dry["to_new"]) == (False, 1, 100)
        held = http.post(f"{base}/except", headers=auth, json={"client": bad, "reason": "r"})
        assert held.status_code == 200 and held.json()["stage"] == "old", held.text
        done = http.post(f"{base}/cohort", headers=auth, json={"stage": "new", "percent": 100})
        assert done.status_code == 200 and done.json()["to_new"] == 99, done.text
        for percent in (-1, 101):
            bad_input = http.post(
                f"{base}/cohort", headers=auth, json={"stage": "new", "percent": percent}
            )
            assert bad_input.status_code == 422
        status = http.get(base, headers=auth).json()
        assert status["counts"] == {"old": 1, "shadow": 0, "new": 99}
    rt.close()


def test_a_flag_switched_off_outside_cutover_is_shown_and_switched_on_by_the_next_step(
    file_runtime: Runtime, orders: str
) -> None:
    """Someone switches the new flag off (as in Unleash's UI): every client reads old,
    status says why; repeating the cohort step is a real step again (gated, audited)."""
    clients = [f"k{i:03d}" for i in range(100)]
    seed_ledger(file_runtime, orders, clients)
    service = FlagService(file_runtime)
    service.set_cohort(orders, Stage.NEW, 50, actor="t")
    path = file_runtime.settings.state_dir / "flags" / "flags.json"
    doc = json.loads(path.read_text())
    (flag,) = [f for f in doc["features"] if f["name"] == flag_name(orders, Stage.NEW)]
    flag["enabled"] = False
    path.write_text(json.dumps(doc))
    status = service.status(orders)
    assert any("switched off outside cutover" in w for w in status.warnings)
    assert status.counts["new"] == 0
    outside = [c for c in status.clients if c.via == "outside"]
    assert outside and all(c.changed_outside and c.stage is Stage.OLD for c in outside)
    plan = service.set_cohort(orders, Stage.NEW, 50, actor="t", reason="switch it back on")
    assert plan.applied and plan.to_new and not plan.blocked
    assert service.status(orders).counts["new"] == len(plan.to_new)


def test_the_gate_asks_shadow_evidence_of_single_and_bulk_moves(
    file_runtime: Runtime, orders: str
) -> None:
    """Verified clients whose shadow evidence shows mismatches are refused, named with
    their rate, both by `set ... new` and by a cohort step; a client with clean
    evidence (or none, at the default minimum of 0 comparisons) passes. Nothing moves
    on a refusal."""
    from flags.evidence import Counts, EvidenceBuffer

    rules = StageRules(orders)
    clients = [f"e{i:03d}" for i in range(200)]
    cohort = [c for c in clients if rules.bucket(c) <= 20]
    dirty, clean = cohort[0], cohort[1]
    seed_ledger(file_runtime, orders, clients)
    buffer = EvidenceBuffer(file_runtime.sql)
    buffer.count(orders, dirty, "shadow", Counts(comparisons=50, mismatches=2, mismatched_items=2))
    buffer.count(orders, clean, "shadow", Counts(comparisons=50))
    buffer.flush()
    service = FlagService(file_runtime)

    with pytest.raises(GateRefused, match=r"mismatch"):
        service.set_stage(orders, dirty, Stage.NEW, actor="t")
    assert service.backend.read(orders).stage_of(dirty) is Stage.OLD
    with pytest.raises(BulkGateRefused) as refused:
        service.set_cohort(orders, Stage.NEW, 20, actor="t")
    assert [c for c, _ in refused.value.blocked] == [dirty]
    assert service.backend.read(orders).new.rule.percent == 0

    change = service.set_stage(orders, clean, Stage.NEW, actor="t")
    assert change is not None and "50 shadow comparisons" in (change.gate or ""), change
    service.hold(orders, dirty, Stage.OLD, actor="t", reason="mismatches")
    plan = service.set_cohort(orders, Stage.NEW, 20, actor="t")
    assert plan.applied and dirty not in plan.to_new
