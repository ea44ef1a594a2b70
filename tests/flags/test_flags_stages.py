"""Stage rules that need no server: naming, id checks, how strategies read as stages,
moves, holds and cohorts computed offline."""

from __future__ import annotations

import pytest

from flags.stages import (
    ClientIdError,
    EntityFlags,
    FlagError,
    FlagState,
    Stage,
    StageRule,
    check_client_id,
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
