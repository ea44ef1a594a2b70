"""Stage rules that need no server: naming, id checks, how strategies read as stages,
moves, holds and cohorts computed offline."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flags.stages import (
    ClientIdError,
    EntityFlags,
    FlagError,
    FlagState,
    ListLimitError,
    PercentError,
    Stage,
    StageRule,
    StageRules,
    check_client_id,
    check_percent,
    cohort_of,
    cohort_strategy,
    constrained_ids,
    feature,
    flag_name,
    strategy,
)


def test_flag_names_per_entity_and_stage() -> None:
    assert flag_name("orders", Stage.NEW) == "cutover.orders.new"
    assert flag_name("orders", Stage.SHADOW) == "cutover.orders.shadow"
    with pytest.raises(ValueError):
        flag_name("orders", Stage.OLD)


@pytest.mark.parametrize("bad", ["", " acme", "acme ", "ac\tme", "\n"])
def test_ids_that_could_never_match_exactly_are_refused(bad: str) -> None:
    """Refused before anything is written: no flag changes for such an id."""
    with pytest.raises(ClientIdError):
        check_client_id(bad)


def test_ids_are_kept_verbatim() -> None:
    assert check_client_id("Acme-Ü 1") == "Acme-Ü 1"


def test_a_strategy_always_names_clients() -> None:
    """An empty id list never becomes a strategy (it would be rejected, or match all)."""
    with pytest.raises(FlagError):
        strategy("cutover.orders.new", [])
    built = strategy("cutover.orders.new", ["b", "a", "a"])
    assert built["constraints"][0]["values"] == ["a", "b"]
    assert built["constraints"][0]["caseInsensitive"] is False
    assert constrained_ids(built) == {"a", "b"}


@pytest.mark.parametrize(
    "constraints",
    [
        [],
        [{"contextName": "appName", "operator": "IN", "values": ["x"]}],
        [{"contextName": "clientId", "operator": "NOT_IN", "values": ["x"]}],
        [{"contextName": "clientId", "operator": "IN", "values": ["x"], "inverted": True}],
        [{"contextName": "clientId", "operator": "IN", "values": ["x"], "caseInsensitive": True}],
    ],
)
def test_strategies_that_do_not_pin_exact_ids_count_as_switching_everyone(
    constraints: list[dict[str, object]],
) -> None:
    state = FlagState.from_strategies("f", True, [{"name": "x", "constraints": constraints}])
    assert state.unconstrained == 1
    assert state.includes("anyone")
    assert "EVERY CLIENT" in state.warnings()[0]


def test_disabled_strategies_are_ignored() -> None:
    strat = {**strategy("f", ["a"]), "disabled": True}
    state = FlagState.from_strategies("f", True, [strat])
    assert not state.includes("a") and not state.unconstrained


def test_new_wins_over_shadow_and_absence_is_old() -> None:
    flags = EntityFlags(
        "orders",
        shadow=FlagState("s", True, True, StageRule(frozenset({"a", "b"}))),
        new=FlagState("n", True, True, StageRule(frozenset({"b"}))),
    )
    assert flags.stage_of("a") is Stage.SHADOW
    assert flags.stage_of("b") is Stage.NEW
    assert flags.stage_of("c") is Stage.OLD
    assert flags.stage_of("A") is Stage.OLD  # exact ids
    off = EntityFlags(
        "orders",
        shadow=FlagState("s", True, False, StageRule(frozenset({"a"}))),
        new=FlagState("n"),
    )
    assert off.stage_of("a") is Stage.OLD  # a switched-off flag holds nobody


def test_an_empty_feature_is_off_with_no_strategy() -> None:
    empty = feature("cutover.orders.new", StageRule())
    assert empty["enabled"] is False and empty["strategies"] == []
    on = feature("cutover.orders.new", StageRule(frozenset({"a"})))
    assert on["enabled"] is True and constrained_ids(on["strategies"][0]) == {"a"}


# -- rules at scale: cohorts, pilot lists, exceptions (pure, offline) ---------------------
ids = st.text(alphabet="abcdefghij-0123456789", min_size=1, max_size=8)
percents = st.integers(0, 100)
stages = st.sampled_from(list(Stage))


@st.composite
def rules(draw: st.DrawFn) -> StageRules:
    """Any reachable definition: cohorts at any percentage, then moves and holds."""
    out = StageRules("orders", StageRule(percent=draw(percents)), StageRule(percent=draw(percents)))
    for client, target, hold in draw(st.lists(st.tuples(ids, stages, st.booleans()), max_size=12)):
        out = out.moved(client, target, hold=hold and target is not Stage.NEW)
    return out


@settings(max_examples=300, deadline=None)
@given(rules(), ids, stages, st.lists(ids, max_size=20))
def test_a_move_puts_the_client_at_its_stage_and_nobody_else_moves(
    before: StageRules, client: str, target: Stage, others: list[str]
) -> None:
    after = before.moved(client, target)
    assert after.stage_of(client) is target
    for other in set(others) - {client}:
        assert after.stage_of(other) is before.stage_of(other), other


@settings(max_examples=300, deadline=None)
@given(rules(), ids, st.sampled_from([Stage.OLD, Stage.SHADOW]), percents, percents)
def test_a_held_client_stays_held_whatever_the_cohorts_do(
    before: StageRules, client: str, held_at: Stage, shadow: int, new: int
) -> None:
    """Held at old/shadow, then both cohorts set anywhere (100% included): still there."""
    held = before.moved(client, held_at, hold=True)
    later = held.with_percent(Stage.SHADOW, shadow).with_percent(Stage.NEW, new)
    if held_at is Stage.OLD:
        assert later.stage_of(client) is Stage.OLD
    else:
        assert later.stage_of(client) is Stage.SHADOW
    assert later.exceptions()[client] is later.stage_of(client)
    # Set forward again: the hold is gone and it reads new.
    assert later.moved(client, Stage.NEW).stage_of(client) is Stage.NEW
    assert client not in later.moved(client, Stage.NEW).exceptions()


@settings(max_examples=200, deadline=None)
@given(st.lists(ids, min_size=1, max_size=50, unique=True), percents, percents)
def test_cohorts_nest_and_follow_the_sdk_hash(clients: list[str], p: int, q: int) -> None:
    """One groupId per entity: at shadow max(p, q)% and new min(p, q)%, every client of
    the new cohort is in the shadow one, and membership is the SDK's own bucket."""
    from UnleashClient.utils import normalized_hash

    low, high = sorted((p, q))
    both = StageRules("orders", StageRule(percent=high), StageRule(percent=low))
    for client in clients:
        b = normalized_hash(client, "cutover.orders")
        assert both.bucket(client) == b
        expected = Stage.NEW if b <= low else Stage.SHADOW if b <= high else Stage.OLD
        assert both.stage_of(client) is expected


@settings(max_examples=200, deadline=None)
@given(rules())
def test_strategies_read_back_as_the_rule_they_hold(written: StageRules) -> None:
    """What a backend stores (client-features strategies) parses back to the same rule:
    cutover's own strategies are never foreign."""
    for stage in (Stage.SHADOW, Stage.NEW):
        flag = flag_name("orders", stage)
        rule = written.rule(stage)
        doc = feature(flag, rule)
        state = FlagState.from_strategies(flag, doc["enabled"], doc["strategies"])
        assert state.rule == rule and not state.foreign
        assert doc["enabled"] is rule.switches_anyone


def test_a_cohort_edited_out_of_shape_is_foreign() -> None:
    """A cohort whose groupId, stickiness or constraints were changed in the UI would
    switch other clients than cutover computes: it counts as switching everyone."""
    flag = flag_name("orders", Stage.NEW)
    good = cohort_strategy(flag, StageRule(percent=10, excepted=frozenset({"x"})))
    assert cohort_of(good, "cutover.orders") == (10, frozenset({"x"}))
    bad = [
        {**good, "parameters": {**good["parameters"], "groupId": "other"}},
        {**good, "parameters": {**good["parameters"], "stickiness": "default"}},
        {**good, "parameters": {**good["parameters"], "rollout": "12.5"}},
        {**good, "constraints": [*good["constraints"], good["constraints"][0]]},
        {**good, "segments": [1]},
    ]
    for strat in bad:
        state = FlagState.from_strategies(flag, True, [strat])
        assert state.foreign and state.includes("anyone"), strat


def test_lists_over_the_limit_are_refused_naming_it() -> None:
    full = StageRules("orders", new=StageRule(pilot=frozenset(f"c{i}" for i in range(3))))
    full.check_limits(3)
    with pytest.raises(ListLimitError, match=r"4 clients, over the server's limit of 3.*cohort"):
        full.moved("c9", Stage.NEW).check_limits(3)
    held = StageRules("orders", new=StageRule(percent=100, excepted=frozenset({"a", "b", "c"})))
    with pytest.raises(ListLimitError, match=r"exceptions would hold 4 clients.*--release"):
        held.moved("d", Stage.OLD).check_limits(3)


@pytest.mark.parametrize("bad", [-1, 101, "12.5", "x", ""])
def test_percentages_outside_0_to_100_are_refused(bad: object) -> None:
    with pytest.raises(PercentError):
        check_percent(bad)
    with pytest.raises(PercentError):
        StageRules("orders").with_percent(Stage.NEW, bad)  # type: ignore[arg-type]
