"""Rollout plans, in process, against the real stores and both flag backends.

Synthetic clients live only in the backfill ledger (verified clean unless a test says
otherwise; ``flags_support.seed_ledger``): they are known to cutover, so every wave is
computed and gated over them. Bakes run on a fake clock whose ``sleep`` advances time
and lets a test inject what the API processes would have counted meanwhile (evidence
rows, 5xx counts) straight into the SQL store, through ``flags.evidence``.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime, timedelta
from typing import Any

import pytest
from flags_support import seed_ledger
from hypothesis import given
from hypothesis import strategies as st
from support import frozen, make_runtime

from core.clock import now_utc
from core.config import Config, ConfigError, Subscription
from core.settings import Settings
from cutover import services
from flags import rollout_state
from flags.evaluator import StageReader
from flags.evidence import Counts, Outcomes, add_counts, add_outcomes, bucket_start
from flags.file_backend import flag_file, load_snapshot, write_atomically
from flags.rollout import (
    PlanInputError,
    PlanSpec,
    Rollout,
    parse_duration,
    parse_waves,
    plan_report,
)
from flags.rollout_state import RolloutError
from flags.service import FlagService
from flags.stages import PercentError, Stage, bucket, cohort_group, flag_name
from stores.mapping import Row
from stores.runtime import Runtime
from subscribers import audit as sub_audit
from subscribers import manage

HOUR = 3600


class FakeClock:
    """Time that moves only when the run sleeps; ``on_sleep`` callbacks run after."""

    def __init__(self) -> None:
        self.now = now_utc()
        self.slept = 0.0
        self.on_sleep: list[Callable[[], None]] = []

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.slept += seconds
        for hook in list(self.on_sleep):
            hook()


def _clients(n: int) -> list[str]:
    return [f"c{i:05d}" for i in range(n)]


def _in_range(entity: str, clients: list[str], lo: int, hi: int) -> list[str]:
    group = cohort_group(entity)
    return [c for c in clients if lo < bucket(c, group) <= hi]


def _steps(service: FlagService, entity: str) -> list[tuple[str, int, int]]:
    return [(s.stage, s.from_percent, s.to_percent) for s in service.audit.steps(entity)]


def _runner(rt: Runtime, clock: FakeClock | None = None, **kw: Any) -> Rollout:
    clock = clock or FakeClock()
    return Rollout(rt, actor="tester", clock=clock, sleep=clock.sleep, **kw)


# -- definitions ----------------------------------------------------------------------------
@given(st.lists(st.integers(min_value=-5, max_value=130), min_size=1, max_size=6))
def test_a_wave_list_is_accepted_exactly_when_it_increases_within_1_to_100(
    waves: list[int],
) -> None:
    """Any list of whole numbers: accepted as given when strictly increasing in 1..100;
    otherwise a clear error (PercentError outside 0..100)."""
    text = ",".join(map(str, waves))
    good = all(1 <= w <= 100 for w in waves) and all(a < b for a, b in itertools.pairwise(waves))
    if good:
        assert parse_waves(text) == tuple(waves)
        return
    with pytest.raises((PlanInputError, PercentError)) as err:
        parse_waves(text)
    assert str(err.value)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30m", 1800), ("90s", 90), ("1h30m", 5400), ("0", 0), ("2.5", 2.5)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10x", "-5", "5m3", "m"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(PlanInputError, match="duration"):
        parse_duration(text)


def test_the_busiest_clients_make_the_pilot(file_runtime: Runtime, orders: str) -> None:
    """Busiest: most shadow comparisons plus responses served over the gate's window,
    then most documents in the old store; clients already at new are skipped."""
    rt = file_runtime
    clients = _clients(30)
    seed_ledger(rt, orders, clients)
    ent = rt.cfg.entity(orders)
    docs = [Row(f"d{i}", clients[20], 1, False, {}) for i in range(3)]
    rt.rethink.write(ent, [*docs, Row("e0", clients[21], 1, False, {})])
    at = bucket_start(now_utc(), HOUR)
    add_counts(rt.sql, {(orders, clients[3], "shadow", at): Counts(100)})
    add_counts(rt.sql, {(orders, clients[7], "shadow", at): Counts(40)})
    add_outcomes(rt.sql, {(orders, clients[9], "new", at): Outcomes(70)})
    r = _runner(rt)
    assert r.busiest(orders, 5) == [clients[3], clients[9], clients[7], clients[20], clients[21]]
    r.service.set_stage(orders, clients[9], Stage.NEW, actor="t")
    spec = r.spec(orders, pilot=[clients[0]], pilot_busiest=2)
    assert spec.pilot == (clients[0], clients[3], clients[7])


# -- 20,000 clients to new ---------------------------------------------------------------------
def test_twenty_thousand_clients_go_to_new_in_waves_with_three_exceptions(
    file_runtime: Runtime, orders: str
) -> None:
    """A pilot of 5, then cohorts 1, 10, 50, 100%: the dry run counts each wave's
    clients (every one passes the gate), the run moves 19,997 clients to new and keeps
    the 3 held back where they are; each cohort step is applied and audited exactly
    once, in order, every client's change naming the plan. The legacy guard still sees
    the 3 held clients on the old store; once they are released, nobody: the legacy
    subscription may be dropped without --force."""
    rt = file_runtime
    clients = _clients(20_000)
    seed_ledger(rt, orders, clients)
    service = FlagService(rt)
    held_old, held_shadow = clients[:2], clients[2]
    for client in held_old:
        service.hold(orders, client, Stage.OLD, actor="t", reason="noisy tenant")
    service.hold(orders, held_shadow, Stage.SHADOW, actor="t")
    pilot = clients[100:105]
    r = _runner(rt, service=service)
    spec = r.spec(orders, waves="1,10,50,100", bake="0", pilot=pilot)
    preview = r.preview(orders, spec)
    assert preview.waves[0].to_new == 5  # the pilot
    assert sum(w.to_new for w in preview.waves) == 19_997
    assert all(not w.blocked for w in preview.waves)
    assert service.backend.read(orders).new.rule.percent == 0  # the dry run changed nothing

    row, created = r.plan(orders, spec)
    assert created and row.state == "planned"
    end = r.run(orders)
    assert end.state == "done", end.reason

    flags = service.backend.read(orders)
    stages = Counter(flags.stage_of(c) for c in clients)
    assert stages == {Stage.NEW: 19_997, Stage.OLD: 2, Stage.SHADOW: 1}
    assert [flags.stage_of(c) for c in (*held_old, held_shadow)] == [
        Stage.OLD,
        Stage.OLD,
        Stage.SHADOW,
    ]
    assert _steps(service, orders) == [
        ("shadow", 0, 1),
        ("new", 0, 1),
        ("shadow", 1, 10),
        ("new", 1, 10),
        ("shadow", 10, 50),
        ("new", 10, 50),
        ("shadow", 50, 100),
        ("new", 50, 100),
    ]
    latest = service.audit.latest(orders)
    moved = [c for c in clients if latest[c].to_stage == "new"]
    assert len(moved) == 19_997
    assert all("rollout" in (latest[c].reason or "") for c in moved)
    report = plan_report(rt, orders)  # what the admin API answers
    assert [w["progress"] for w in report["waves"]] == ["done"] * 5
    assert report["flags"]["cohorts"] == {"shadow": 100, "new": 100}

    entity = rt.cfg.entity(orders)
    assert manage.default_old_store_readers(rt, entity) == [*held_old, held_shadow]
    for client in (*held_old, held_shadow):
        service.release(orders, client, actor="t")
    assert r.report(orders)["flags"]["everyone_new"]
    assert manage.default_old_store_readers(rt, entity) == []


def test_the_legacy_subscription_drops_without_force_once_a_plan_moved_everyone(
    file_settings: Settings, flag_config: Config, orders: str, pubsub_server: services.ServiceInfo
) -> None:
    """The legacy (rethinkdb-sink) subscription on the real Pub/Sub server: refused
    while the plan's last wave has not run (it names the clients still on the old
    store), dropped without --force once the plan put everyone at 100% new with no
    exception, and the drop is audited as not forced."""
    name = f"{orders}-rethinkdb"
    sub = Subscription(name=name, topic=orders, entity=orders, sink="rethinkdb")
    cfg = flag_config.model_copy(update={"subscriptions": {name: sub}})
    settings = file_settings.model_copy(update={"pubsub_emulator_host": pubsub_server.url})
    rt = make_runtime(settings, cfg)
    clients = _clients(200)
    seed_ledger(rt, orders, clients)
    manage.add(rt, name, actor="t")
    r = _runner(rt)
    r.plan(orders, r.spec(orders, waves="30,100", bake="0"))
    r.pause(orders)  # at once: nothing has moved
    with pytest.raises(manage.DropRefused, match=f"200 client.s. still read {orders}"):
        manage.drop(rt, name, actor="t")
    r.resume(orders)
    assert r.run(orders).state == "done"
    change = manage.drop(rt, name, actor="t")
    assert change.done == [f"deleted subscription {name}"]
    [entry, refusal] = sub_audit.read(rt.sql, name)[:2]
    assert (entry.action, entry.details["force"]) == ("drop", False)
    assert entry.details["old_store_readers"] == [] and refusal.action == "drop-refused"
    rt.close()


# -- guardrails ---------------------------------------------------------------------------------
def _inject_once(clock: FakeClock, when: Callable[[], bool], do: Callable[[], None]) -> None:
    def hook() -> None:
        if when():
            do()
            clock.on_sleep.remove(hook)

    clock.on_sleep.append(hook)


def _phase(rt: Runtime, entity: str) -> tuple[int, str]:
    row = rollout_state.load(rt.sql, entity)
    assert row is not None
    return row.wave, row.phase


def test_a_guardrail_rolls_the_wave_back_on_injected_mismatches_then_resumes(
    file_runtime: Runtime, orders: str
) -> None:
    """While wave 2 (50%) bakes in shadow, one of its clients' comparisons all find
    mismatches (0.6% of the wave's, the limit is 0.1%): the wave rolls back by itself
    (cohorts back to 10%, wave 1 untouched), the plan pauses saying which threshold with
    the figures, and the audit of every client moved back says the same. Resumed, the
    gate itself refuses that client (its own evidence); held back, the wave starts
    again with the earlier mismatches in its baseline, and the plan finishes."""
    rt = file_runtime
    clients = _clients(400)
    seed_ledger(rt, orders, clients)
    wave2 = _in_range(orders, clients, 10, 50)
    clock = FakeClock()
    r = _runner(rt, clock)
    r.plan(orders, r.spec(orders, waves="10,50,100", bake="60s"))

    def mismatches() -> None:
        at = bucket_start(now_utc(), HOUR)
        counts = {(orders, c, "shadow", at): Counts(10, 0, 0, 0) for c in wave2}
        counts[(orders, wave2[0], "shadow", at)] = Counts(10, 10, 3, 0)  # one bad client
        add_counts(rt.sql, counts)

    _inject_once(clock, lambda: _phase(rt, orders) == (1, "baking"), mismatches)
    end = r.run(orders)
    assert end.state == "paused" and end.phase == "pending" and end.wave == 1
    assert end.reason is not None
    assert "shadow mismatch rate" in end.reason and "above the limit of 0.10%" in end.reason
    assert f"of {10 * len(wave2)} comparisons" in end.reason
    flags = r.service.backend.read(orders)
    assert (flags.shadow.rule.percent, flags.new.rule.percent) == (10, 10)
    assert all(flags.stage_of(c) is Stage.OLD for c in wave2)
    assert all(flags.stage_of(c) is Stage.NEW for c in _in_range(orders, clients, 0, 10))
    back = [c for c in r.service.audit.history(orders) if c.to_stage == "old"]
    assert {c.client_id for c in back} == set(wave2)
    assert all("guardrail tripped: shadow mismatch rate" in (c.reason or "") for c in back)
    report = r.report(orders)
    assert report["plan"]["state"] == "paused"
    tripped = [e for e in report["events"] if e["event"] == "tripped"]
    assert tripped and tripped[-1]["figures"]["mismatches"] == 10

    with pytest.raises(RolloutError, match="paused"):
        r.run(orders)  # a paused plan runs only once resumed
    r.resume(orders)
    end = r.run(orders)  # the gate now refuses the client whose reads mismatched
    assert end.state == "paused" and end.reason is not None
    assert f"shadow mismatch rate of {wave2[0]!r}" in end.reason
    r.service.hold(orders, wave2[0], Stage.OLD, actor="oncall", reason="mismatches")
    r.resume(orders)
    end = r.run(orders)
    assert end.state == "done", end.reason
    assert _steps(r.service, orders) == [
        ("shadow", 0, 10),
        ("new", 0, 10),
        ("shadow", 10, 50),
        ("shadow", 50, 10),
        ("shadow", 10, 50),
        ("new", 10, 50),
        ("shadow", 50, 100),
        ("new", 50, 100),
    ]


def test_a_guardrail_rolls_the_wave_back_after_the_switch_on_injected_5xx(
    file_runtime: Runtime, orders: str
) -> None:
    """Wave 2 has switched to new and is watched: 5% of its clients' responses are
    5xx (limit 1%, from 100 responses). It rolls back by itself, new first, then
    shadow, to the percentages before the wave; the plan pauses naming the 5xx rate
    with its figures. Fewer responses than the minimum never trip."""
    rt = file_runtime
    clients = _clients(300)
    seed_ledger(rt, orders, clients)
    wave2 = _in_range(orders, clients, 20, 60)
    clock = FakeClock()
    r = _runner(rt, clock)
    r.plan(orders, r.spec(orders, waves="20,60,100", bake="30s", watch="60s"))
    at = bucket_start(now_utc(), HOUR)
    few = {(orders, wave2[0], "new", at): Outcomes(50, 50)}  # under 100: no verdict
    many = {(orders, c, "new", at): Outcomes(20, 1) for c in wave2}
    _inject_once(
        clock, lambda: _phase(rt, orders) == (1, "baking"), lambda: add_outcomes(rt.sql, few)
    )
    _inject_once(
        clock, lambda: _phase(rt, orders) == (1, "watching"), lambda: add_outcomes(rt.sql, many)
    )
    end = r.run(orders)
    assert end.state == "paused" and end.wave == 1
    served, errors = 50 + 20 * len(wave2), 50 + len(wave2)
    assert end.reason is not None and "5xx rate" in end.reason
    assert f"({errors} of {served} responses" in end.reason
    assert "CUTOVER_ROLLOUT_MAX_ERROR_RATE" in end.reason
    flags = r.service.backend.read(orders)
    assert (flags.shadow.rule.percent, flags.new.rule.percent) == (20, 20)
    steps = _steps(r.service, orders)
    assert steps[-4:] == [("shadow", 20, 60), ("new", 20, 60), ("new", 60, 20), ("shadow", 60, 20)]


# -- crashes, leases, edits ----------------------------------------------------------------------
class Died(BaseException):
    """The process dies here (nothing after it runs, nothing is cleaned up)."""


def test_a_crash_between_a_flag_change_and_its_record_repeats_and_skips_nothing(
    file_runtime: Runtime, orders: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run dies right after each cohort step reached the flags, before the plan
    recorded it (nothing after that point runs: not even giving the lease back). The
    next run is refused while the dead one's lease lasts, then takes over, re-applies
    the step, finds it there already (no change, nothing audited) and goes on. In the
    end every step is in the audit exactly once, in order."""
    settings = file_runtime.settings.model_copy(update={"rollout_lease_ttl_s": 1.0})
    rt = Runtime(settings, file_runtime.cfg)
    seed_ledger(rt, orders, _clients(200))
    real_step, real_release = FlagService.set_cohort, rollout_state.release
    died: set[tuple[Any, ...]] = set()
    dying: list[bool] = []

    def dies_after(self: FlagService, *args: Any, **kw: Any) -> Any:
        plan = real_step(self, *args, **kw)
        if not kw.get("dry_run") and args not in died:
            died.add(args)
            dying.append(True)
            raise Died
        return plan

    def release(*args: Any) -> None:
        if not dying:
            real_release(*args)

    monkeypatch.setattr(FlagService, "set_cohort", dies_after)
    monkeypatch.setattr(rollout_state, "release", release)
    r = _runner(rt)
    r.plan(orders, r.spec(orders, waves="10,50", bake="0"))
    deaths = 0
    while True:
        try:
            end = _runner(rt).run(orders)
            break
        except Died:
            deaths += 1
            dying.clear()
            with pytest.raises(RolloutError, match="another `rollout run` holds"):
                _runner(rt).run(orders)
            row = rollout_state.load(rt.sql, orders)
            assert row is not None and row.lease_expires is not None
            time.sleep(max(0.0, (row.lease_expires - now_utc()).total_seconds()) + 0.05)
    assert deaths == 4 and end.state == "done", end.reason
    assert _steps(r.service, orders) == [
        ("shadow", 0, 10),
        ("new", 0, 10),
        ("shadow", 10, 50),
        ("new", 10, 50),
    ]
    rt.close()


def test_a_plan_cannot_be_edited_while_it_runs_and_bad_input_changes_nothing(
    file_runtime: Runtime, orders: str
) -> None:
    """Unknown entity, bad waves, unknown pilot client: clear errors, no plan, no flag
    changed. A started plan refuses another definition (the same one is no change);
    abort ends it with every client where it is, and a new plan starts from there."""
    rt = file_runtime
    clients = _clients(100)
    seed_ledger(rt, orders, clients)
    r = _runner(rt)
    with pytest.raises(ConfigError, match="unknown entity"):
        r.spec("nope", waves="10")
    for waves in ("0,50", "10,150", "50,10", "10,,20", "ten"):
        with pytest.raises((PlanInputError, PercentError)):
            r.spec(orders, waves=waves)
    with pytest.raises(PlanInputError, match="unknown"):
        r.spec(orders, pilot=["not-a-client"])
    assert rollout_state.load(rt.sql, orders) is None

    clock = FakeClock()
    r = _runner(rt, clock)
    spec = r.spec(orders, waves="10,100", bake="60s")
    r.plan(orders, spec)
    edited = PlanSpec((10, 50, 100), (), 60.0)
    assert r.plan(orders, edited)[0].definition == edited.to_json()  # never ran: replaced
    r.plan(orders, spec)

    def try_edit() -> None:
        with pytest.raises(RolloutError, match="not edited while it runs"):
            r.plan(orders, edited)
        assert r.plan(orders, spec)[1] is False  # the same definition: no change
        r.pause(orders, "look at it")

    _inject_once(clock, lambda: True, try_edit)
    end = r.run(orders)
    assert end.state == "paused" and end.reason == "paused by tester: look at it"
    assert end.phase == "baking"  # the pause took effect at the next tick
    before = r.service.backend.read(orders).rules
    r.abort(orders, "changed my mind")
    assert r.service.backend.read(orders).rules == before  # abort touches no flag
    row, created = r.plan(orders, edited)
    assert created and row.expected == {"shadow": 10, "new": 0}
    assert r.preview(orders, edited).waves[0].to_new == len(_in_range(orders, clients, 0, 10))


def test_kill_stops_the_plan_and_the_run_notices(file_runtime: Runtime, orders: str) -> None:
    """`flags kill` mid-bake: every client back to old at once, the plan stopped with
    the kill's words; the run stops at its next tick without changing anything."""
    rt = file_runtime
    seed_ledger(rt, orders, _clients(100))
    clock = FakeClock()
    r = _runner(rt, clock)
    r.plan(orders, r.spec(orders, waves="10,100", bake="60s"))
    _inject_once(
        clock,
        lambda: _phase(rt, orders) == (1, "baking"),
        lambda: FlagService(rt).kill(orders, actor="oncall", reason="incident"),
    )
    end = r.run(orders)
    assert end.state == "stopped" and end.reason == "kill switch by oncall: incident"
    flags = r.service.backend.read(orders)
    assert (flags.shadow.rule.percent, flags.new.rule.percent) == (0, 0)
    assert _steps(r.service, orders)[-2:] == [("shadow", 100, 0), ("new", 10, 0)]


def test_a_cohort_edited_outside_the_plan_stops_it(file_runtime: Runtime, orders: str) -> None:
    rt = file_runtime
    seed_ledger(rt, orders, _clients(100))
    clock = FakeClock()
    r = _runner(rt, clock)
    r.plan(orders, r.spec(orders, waves="10,100", bake="60s"))
    _inject_once(
        clock,
        lambda: True,
        lambda: FlagService(rt).set_cohort(orders, Stage.SHADOW, 30, actor="someone"),
    )
    end = r.run(orders)
    assert end.state == "stopped" and end.reason is not None
    assert "changed outside the plan" in end.reason
    assert "at 30% where the plan set 10%" in end.reason
    assert "someone" in end.reason
    assert r.service.backend.read(orders).shadow.rule.percent == 30  # left as found


def test_a_flag_switched_off_outside_the_plan_stops_it(file_runtime: Runtime, orders: str) -> None:
    """Someone switches the shadow flag off by hand (as in Unleash's UI) mid-bake: its
    rule is intact but nobody reads shadow; the plan stops saying so, touching nothing."""
    rt = file_runtime
    seed_ledger(rt, orders, _clients(100))
    clock = FakeClock()
    r = _runner(rt, clock)
    r.plan(orders, r.spec(orders, waves="10,100", bake="60s"))
    path = flag_file(rt.settings)

    def switch_off() -> None:
        data = load_snapshot(path)
        for feature in data["features"]:
            if feature["name"] == flag_name(orders, Stage.SHADOW):
                feature["enabled"] = False
        write_atomically(path, data)

    _inject_once(clock, lambda: True, switch_off)
    end = r.run(orders)
    assert end.state == "stopped" and end.reason is not None
    assert "switched off outside cutover" in end.reason
    assert _steps(r.service, orders) == [("shadow", 0, 10)]


def test_the_gate_refusing_a_wave_pauses_the_plan_before_anything_changes(
    file_runtime: Runtime, orders: str
) -> None:
    rt = file_runtime
    clients = _clients(200)
    unverified = _in_range(orders, clients, 10, 50)[0]
    seed_ledger(rt, orders, clients, unverified=[unverified])
    r = _runner(rt)
    spec = r.spec(orders, waves="10,50", bake="0")
    preview = r.preview(orders, spec)
    assert not preview.waves[0].blocked
    assert [c for c, _ in preview.waves[1].blocked] == [unverified]
    assert unverified in preview.waves[1].verdict()
    r.plan(orders, spec)
    end = r.run(orders)
    assert end.state == "paused" and end.wave == 1 and end.phase == "pending"
    assert end.reason is not None and "the gate refuses wave 2" in end.reason
    assert unverified in end.reason and "Nothing was changed" in end.reason
    assert _steps(r.service, orders) == [("shadow", 0, 10), ("new", 0, 10)]


# -- Unleash --------------------------------------------------------------------------------------
def test_unleash_down_during_a_wave_pauses_the_plan_and_reads_keep_their_stages(
    unleash_runtime: Runtime, orders: str, unleash_server: services.ServiceInfo
) -> None:
    """On the real Unleash server: a pilot of 3, then 10%, 100%. Unleash stops
    answering while wave 2 bakes: the plan pauses with the reason, nothing more is
    changed (the audit has what was done, nothing else), and an API process's stage
    reader keeps serving the last known stages. Back up, resumed: the plan finishes."""
    settings = unleash_runtime.settings.model_copy(update={"unleash_request_timeout_s": 1.0})
    rt = Runtime(settings, unleash_runtime.cfg)
    clients = _clients(300)
    seed_ledger(rt, orders, clients)
    clock = FakeClock()
    r = _runner(rt, clock)
    pilot = clients[:3]
    r.plan(orders, r.spec(orders, waves="10,100", bake="60s", pilot=pilot))
    reader = StageReader(settings)
    wave2 = [c for c in _in_range(orders, clients, 0, 10) if c not in pilot]
    later = next(c for c in _in_range(orders, clients, 10, 100) if c not in pilot)
    down = ExitStack()
    seen: dict[str, Stage] = {}

    def unleash_goes_down() -> None:
        deadline = time.monotonic() + 20
        while reader.stage(orders, wave2[0]) is not Stage.SHADOW and time.monotonic() < deadline:
            time.sleep(0.1)
        down.enter_context(frozen(unleash_server.pid))

    _inject_once(clock, lambda: _phase(rt, orders) == (1, "baking"), unleash_goes_down)
    try:
        assert reader.wait_ready(10)
        end = r.run(orders)
        seen = {c: reader.stage(orders, c) for c in [*pilot, wave2[0], later]}
    finally:
        down.close()
    assert end.state == "paused" and end.wave == 1 and end.phase == "baking"
    assert end.reason is not None and "the flag backend failed during wave 2" in end.reason
    assert "keep their last known stages" in end.reason
    assert seen == {**{c: Stage.NEW for c in pilot}, wave2[0]: Stage.SHADOW, later: Stage.OLD}
    assert _steps(r.service, orders) == [("shadow", 0, 10)]
    r.resume(orders)
    end = r.run(orders)
    reader.close()
    assert end.state == "done", end.reason
    assert r.service.backend.read(orders).new.rule.percent == 100
    rt.close()
