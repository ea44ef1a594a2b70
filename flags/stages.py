"""Read stages and the flag definitions that hold them, for any number of clients.

A client's read stage per entity comes from two flags:

* ``cutover.<entity>.new``: the client reads the SQL store;
* ``cutover.<entity>.shadow``: the client reads RethinkDB and the SQL store is
  compared in the background;
* in neither: ``old``, RethinkDB only (the default, and what every failure falls back to).

Each flag holds one :class:`StageRule`, written as at most two strategies:

* the **pilot list**: ``flexibleRollout`` at 100% constrained on ``clientId IN [...]``
  (exact ids, at most the server's values-per-constraint limit, 250 by default);
* the **cohort**: ``flexibleRollout`` with ``stickiness: clientId``, ``rollout: N`` and
  the entity's ``groupId``, constrained on ``clientId NOT_IN [...]`` when some clients
  are **held back** (the exceptions; same limit). The SDK puts a client in when its
  bucket, ``normalized_hash(clientId, groupId)`` in 1..100, is <= N: cutover computes
  membership with that very function (:func:`bucket`), so the gate checks exactly the
  clients a step switches.

Both flags of an entity share one ``groupId`` (``cutover.<entity>``), so cohorts nest:
with shadow at p% and new at q% <= p%, the new cohort lies inside the shadow cohort,
and raising new to p% switches exactly the clients that were shadowed.

Evaluation: ``new`` first (it wins), then ``shadow``, else ``old``: two ``is_enabled``
calls whatever the number of clients; the polled payload grows only with the pilot
and exception lists. ``new`` winning also orders every move: the target flag gains a
client before the other one loses it, so no reader sees it pass through a stage it is
not moving to. A strategy that is neither a pilot list nor the entity's cohort is
*foreign*: cutover cannot tell whom it switches, so it counts as switching everyone
(warned about, and cutover never switches such a flag on). The Unleash server and the
embedded file hold exactly the same definitions (the ``/api/client/features`` format),
which is why both evaluate the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

#: The Unleash context field every stage flag is constrained and bucketed on.
CONTEXT_FIELD = "clientId"
FLAG_PREFIX = "cutover"
STRATEGY = "flexibleRollout"
STRATEGY_TITLE = "cutover: clients at this stage (managed by `cutover flags`)"
COHORT_TITLE = "cutover: cohort by clientId hash, minus held-back clients (`cutover flags`)"
#: Unleash's default UNLEASH_CONSTRAINT_VALUES_LIMIT (values per constraint).
DEFAULT_LIST_LIMIT = 250


class Stage(StrEnum):
    OLD = "old"
    SHADOW = "shadow"
    NEW = "new"

    @property
    def rank(self) -> int:
        """old < shadow < new: a move to a lower rank is a move back."""
        return _RANK[self]


_RANK = {Stage.OLD: 0, Stage.SHADOW: 1, Stage.NEW: 2}

#: The stages that are held in a flag (``old`` is the absence of both).
FLAGGED = (Stage.SHADOW, Stage.NEW)


class FlagError(RuntimeError):
    """A flag could not be read or changed; the message says which and why."""


class ListLimitError(FlagError):
    """A pilot or exception list would exceed the server's limit; nothing was changed."""


class InputError(ValueError):
    """Bad input to a stage command; nothing was changed."""


class ClientIdError(InputError):
    """A client id that could never match exactly (empty, padded, control characters)."""


class PercentError(InputError):
    """A cohort percentage outside 0..100 (Unleash's rollout is a whole percentage)."""


def flag_name(entity: str, stage: Stage) -> str:
    """``cutover.<entity>.<stage>`` (URL-friendly, as Unleash requires)."""
    if stage is Stage.OLD:
        raise ValueError("the old stage has no flag: it is the absence of both")
    return f"{FLAG_PREFIX}.{entity}.{stage.value}"


def cohort_group(entity: str) -> str:
    """The ``groupId`` of both cohorts of an entity (one per entity: cohorts nest)."""
    return f"{FLAG_PREFIX}.{entity}"


def _group_of_flag(flag: str) -> str:
    return flag.rsplit(".", 1)[0]


def check_client_id(client_id: str) -> str:
    """Refuse ids that could never match exactly.

    Unleash compares constraint values byte for byte (case and spaces count), and its
    UI trims what people type; an id with surrounding spaces would silently match
    nothing there, so it is rejected here rather than stored.
    """
    if not client_id or client_id != client_id.strip():
        raise ClientIdError(
            f"client id {client_id!r} is empty or has surrounding spaces; ids match exactly"
        )
    if any(ord(ch) < 32 for ch in client_id):
        raise ClientIdError(f"client id {client_id!r} contains control characters")
    return client_id


def check_percent(percent: Any) -> int:
    """A whole percentage 0..100, or PercentError saying so."""
    try:
        value = int(str(percent).strip())
    except ValueError:
        raise PercentError(f"percentage {percent!r} is not a whole number 0..100") from None
    if not 0 <= value <= 100:
        raise PercentError(f"percentage {value} is outside 0..100")
    return value


_HASH: Callable[[str, str], int] | None = None


def bucket(client_id: str, group: str) -> int:
    """The client's bucket in 1..100: in a cohort at N% exactly when ``bucket <= N``.

    This is the SDK's own ``UnleashClient.utils.normalized_hash`` (murmur3 of
    ``groupId:clientId``, mod 100, plus 1), the function its flexibleRollout uses. It
    is loaded on first use: importing the SDK costs ~0.15 s, which every CLI command
    would otherwise pay.
    """
    global _HASH
    if _HASH is None:
        from UnleashClient.utils import normalized_hash

        _HASH = normalized_hash
    return _HASH(client_id, group)


# -- what cutover writes ----------------------------------------------------------------
@dataclass(frozen=True)
class StageRule:
    """Whom one stage flag switches: the pilot list, plus the cohort minus exceptions."""

    pilot: frozenset[str] = frozenset()
    percent: int = 0
    #: Held back: never in this stage through the cohort (still through the pilot list,
    #: which cutover keeps disjoint from it).
    excepted: frozenset[str] = frozenset()

    def covers(self, b: int) -> bool:
        """Whether the cohort reaches bucket ``b`` (exceptions aside)."""
        return b <= self.percent

    def includes(self, client_id: str, b: int) -> bool:
        return client_id in self.pilot or (b <= self.percent and client_id not in self.excepted)

    @property
    def switches_anyone(self) -> bool:
        """The flag is on exactly when this holds (an empty flag is off, no strategy)."""
        return bool(self.pilot) or self.percent > 0

    @property
    def has_cohort(self) -> bool:
        """Whether the cohort strategy exists (at 0% it still holds the exceptions)."""
        return self.percent > 0 or bool(self.excepted)

    def with_pilot(self, client_id: str, on: bool) -> StageRule:
        pilot = self.pilot | {client_id} if on else self.pilot - {client_id}
        return replace(self, pilot=frozenset(pilot))

    def with_exception(self, client_id: str, on: bool) -> StageRule:
        excepted = self.excepted | {client_id} if on else self.excepted - {client_id}
        return replace(self, excepted=frozenset(excepted))

    def summary(self) -> str:
        parts = [f"cohort {self.percent}%"]
        if self.pilot:
            parts.append(f"{len(self.pilot)} listed")
        if self.excepted:
            parts.append(f"{len(self.excepted)} held back")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "pilot": sorted(self.pilot),
            "percent": self.percent,
            "exceptions": sorted(self.excepted),
        }


@dataclass(frozen=True)
class StageRules:
    """Both stage rules of one entity: the pure definition every stage follows from.

    Moves are computed here, offline, so the service can check limits and the gate
    before anything is written. A client moved back (to a lower stage than it reads)
    is *held* there: it joins the exceptions of the later stages' cohorts, so a cohort
    that grows later skips it until it is set forward again or released.
    """

    entity: str
    shadow: StageRule = StageRule()
    new: StageRule = StageRule()

    @property
    def group(self) -> str:
        return cohort_group(self.entity)

    def rule(self, stage: Stage) -> StageRule:
        return self.new if stage is Stage.NEW else self.shadow

    def with_rule(self, stage: Stage, rule: StageRule) -> StageRules:
        return replace(self, new=rule) if stage is Stage.NEW else replace(self, shadow=rule)

    def bucket(self, client_id: str) -> int:
        return bucket(client_id, self.group)

    def stage_of(self, client_id: str, b: int | None = None) -> Stage:
        b = self.bucket(client_id) if b is None else b
        if self.new.includes(client_id, b):
            return Stage.NEW
        if self.shadow.includes(client_id, b):
            return Stage.SHADOW
        return Stage.OLD

    def cohort_stage(self, b: int) -> Stage:
        """The stage the cohorts alone give bucket ``b`` (no lists)."""
        if self.new.covers(b):
            return Stage.NEW
        if self.shadow.covers(b):
            return Stage.SHADOW
        return Stage.OLD

    def via(self, client_id: str, b: int | None = None) -> str:
        """Why the client is at its stage: ``pilot``, ``cohort``, ``held`` or ``default``."""
        b = self.bucket(client_id) if b is None else b
        if client_id in self.new.excepted or client_id in self.shadow.excepted:
            return "held"
        if client_id in self.new.pilot or client_id in self.shadow.pilot:
            return "pilot"
        return "default" if self.cohort_stage(b) is Stage.OLD else "cohort"

    def moved(self, client_id: str, target: Stage, *, hold: bool = False) -> StageRules:
        """The rules with ``client_id`` at ``target``, changing only that client.

        Forward (to ``new``, or ``shadow`` from ``old``) releases the client's
        exceptions up to ``target`` and lists it where no cohort covers it. Back, or
        with ``hold``, the client is held: excepted from every later cohort (even one
        at 0%), off every later pilot list, and at ``shadow`` on its pilot list.
        """
        b = self.bucket(client_id)
        new, shadow = self.new, self.shadow
        if target is Stage.NEW:
            new = new.with_exception(client_id, False)
            new = new.with_pilot(client_id, not new.covers(b))
            shadow = shadow.with_pilot(client_id, False).with_exception(client_id, False)
            return replace(self, new=new, shadow=shadow)
        hold = hold or target.rank < self.stage_of(client_id, b).rank
        new = new.with_pilot(client_id, False)
        if hold or new.covers(b):
            new = new.with_exception(client_id, True)
        if target is Stage.SHADOW:
            # Held: listed, so a shadow cohort lowered later cannot drop it to old.
            shadow = shadow.with_exception(client_id, False)
            shadow = shadow.with_pilot(client_id, hold or not shadow.covers(b))
        else:
            shadow = shadow.with_pilot(client_id, False)
            if hold or shadow.covers(b):
                shadow = shadow.with_exception(client_id, True)
        return replace(self, new=new, shadow=shadow)

    def released(self, client_id: str) -> StageRules:
        """The client's exceptions dropped: it follows the cohorts (and its lists) again."""
        return replace(
            self,
            new=self.new.with_exception(client_id, False),
            shadow=self.shadow.with_exception(client_id, False),
        )

    def with_percent(self, stage: Stage, percent: int) -> StageRules:
        return self.with_rule(stage, replace(self.rule(stage), percent=check_percent(percent)))

    def cleared(self) -> StageRules:
        return StageRules(self.entity)

    def listed(self) -> set[str]:
        """Every client a list names (pilot lists and exceptions)."""
        return set().union(
            self.new.pilot, self.new.excepted, self.shadow.pilot, self.shadow.excepted
        )

    def exceptions(self) -> dict[str, Stage]:
        """Each held-back client and the stage it is held at."""
        held = self.new.excepted | self.shadow.excepted
        return {c: self.stage_of(c) for c in sorted(held)}

    def check_limits(self, limit: int, *, changed: Iterable[Stage] = FLAGGED) -> None:
        """ListLimitError, naming the limit and what to do instead, when a list of a
        ``changed`` stage holds more than ``limit`` ids (nothing is written then)."""
        for stage in changed:
            rule, flag = self.rule(stage), flag_name(self.entity, stage)
            if len(rule.pilot) > limit:
                raise ListLimitError(
                    f"{flag}: the pilot list would hold {len(rule.pilot)} clients, over the "
                    f"server's limit of {limit} values per constraint "
                    f"(UNLEASH_CONSTRAINT_VALUES_LIMIT, default {DEFAULT_LIST_LIMIT}). "
                    f"Move clients in bulk with a cohort instead: `cutover flags cohort "
                    f"{self.entity} {stage.value} PERCENT`. Nothing was changed."
                )
            if len(rule.excepted) > limit:
                raise ListLimitError(
                    f"{flag}: the exceptions would hold {len(rule.excepted)} clients, over the "
                    f"server's limit of {limit} values per constraint "
                    f"(UNLEASH_CONSTRAINT_VALUES_LIMIT, default {DEFAULT_LIST_LIMIT}). "
                    f"Lower the cohort instead (`cutover flags cohort {self.entity} "
                    f"{stage.value} PERCENT`; everyone at once: `cutover flags kill "
                    f"{self.entity}`) or release held clients (`cutover flags except "
                    f"{self.entity} CLIENT --release`). Nothing was changed."
                )

    def to_json(self) -> dict[str, Any]:
        return {
            "group_id": self.group,
            "new": self.new.to_json(),
            "shadow": self.shadow.to_json(),
        }


# -- the strategies that hold a rule ----------------------------------------------------
def constraint(ids: Iterable[str], operator: str = "IN") -> dict[str, Any]:
    return {
        "contextName": CONTEXT_FIELD,
        "operator": operator,
        "values": sorted(set(ids)),
        "caseInsensitive": False,
        "inverted": False,
    }


def strategy(flag: str, ids: Iterable[str]) -> dict[str, Any]:
    """The pilot strategy of a stage flag: 100% of the listed clients, nobody else."""
    values = sorted(set(ids))
    if not values:
        raise FlagError(f"{flag}: a strategy needs at least one client (Unleash rejects [])")
    return {
        "name": STRATEGY,
        "title": STRATEGY_TITLE,
        "parameters": {"rollout": "100", "stickiness": "default", "groupId": flag},
        "constraints": [constraint(values)],
    }


def cohort_strategy(flag: str, rule: StageRule) -> dict[str, Any]:
    """The cohort strategy: ``rule.percent``% of clients by clientId hash, minus exceptions.

    With no exceptions it has no constraint (Unleash rejects an empty list); it is
    still cutover's, recognised by its stickiness and groupId (:func:`cohort_of`).
    """
    return {
        "name": STRATEGY,
        "title": COHORT_TITLE,
        "parameters": {
            "rollout": str(rule.percent),
            "stickiness": CONTEXT_FIELD,
            "groupId": _group_of_flag(flag),
        },
        "constraints": [constraint(rule.excepted, "NOT_IN")] if rule.excepted else [],
    }


def strategies_for(flag: str, rule: StageRule) -> list[dict[str, Any]]:
    """The strategies that hold ``rule``: pilot list first, then the cohort."""
    out = [strategy(flag, rule.pilot)] if rule.pilot else []
    if rule.has_cohort:
        out.append(cohort_strategy(flag, rule))
    return out


def _exact_clientid(c: Mapping[str, Any], operator: str) -> bool:
    return (
        c.get("contextName") == CONTEXT_FIELD
        and c.get("operator") == operator
        and not c.get("inverted")
        and not c.get("caseInsensitive")
        and bool(c.get("values"))
    )


def constrained_ids(strat: Mapping[str, Any]) -> frozenset[str] | None:
    """The ids a strategy is limited to, or None when it does not limit ``clientId``.

    Only a non-inverted, case-sensitive ``clientId IN`` with values counts: anything
    else (no constraint, NOT_IN, another field only) may switch every client.
    """
    for c in strat.get("constraints") or ():
        if _exact_clientid(c, "IN"):
            return frozenset(str(v) for v in c["values"])
    return None


def cohort_of(strat: Mapping[str, Any], group: str) -> tuple[int, frozenset[str]] | None:
    """``(percent, exceptions)`` when ``strat`` is exactly a cutover cohort of ``group``.

    That is: flexibleRollout, clientId stickiness, this groupId, a whole rollout 0..100,
    no segment, and either no constraint or one exact ``clientId NOT_IN``. Anything
    else would make cutover's computed membership differ from the SDK's: not a cohort.
    """
    params = strat.get("parameters") or {}
    if (
        strat.get("name") != STRATEGY
        or params.get("stickiness") != CONTEXT_FIELD
        or params.get("groupId") != group
        or strat.get("segments")
    ):
        return None
    try:
        percent = check_percent(params.get("rollout"))
    except PercentError:
        return None
    constraints = list(strat.get("constraints") or ())
    if not constraints:
        return percent, frozenset()
    if len(constraints) == 1 and _exact_clientid(constraints[0], "NOT_IN"):
        return percent, frozenset(str(v) for v in constraints[0]["values"])
    return None


def _describe(strat: Mapping[str, Any]) -> str:
    params = strat.get("parameters") or {}
    keys = ("rollout", "stickiness", "groupId")
    what = ", ".join(f"{k}={params[k]}" for k in keys if k in params)
    title = f" {strat['title']!r}" if strat.get("title") else ""
    return f"{strat.get('name', '?')}{title} ({what or 'no parameters'})"


# -- what a backend holds ---------------------------------------------------------------
@dataclass(frozen=True)
class FlagState:
    """One stage flag in one environment, as the admin side sees it."""

    name: str
    exists: bool = False
    enabled: bool = False
    rule: StageRule = StageRule()
    #: Active strategies cutover does not manage: they may switch anyone.
    foreign: tuple[str, ...] = ()

    @classmethod
    def from_strategies(
        cls, name: str, enabled: bool, strategies: Iterable[Mapping[str, Any]]
    ) -> FlagState:
        pilot: set[str] = set()
        cohort: tuple[int, frozenset[str]] | None = None
        foreign: list[str] = []
        group = _group_of_flag(name)
        for strat in strategies:
            if strat.get("disabled"):
                continue
            limited = constrained_ids(strat)
            if limited is not None:
                pilot |= limited
                continue
            found = cohort_of(strat, group)
            if found is not None and cohort is None:
                cohort = found
            else:
                foreign.append(_describe(strat))
        percent, excepted = cohort or (0, frozenset())
        rule = StageRule(frozenset(pilot), percent, excepted)
        return cls(name, True, enabled, rule, tuple(foreign))

    @property
    def ids(self) -> frozenset[str]:
        """The pilot list."""
        return self.rule.pilot

    @property
    def unconstrained(self) -> int:
        return len(self.foreign)

    def includes(self, client_id: str, b: int | None = None) -> bool:
        if not self.enabled:
            return False
        if self.foreign:
            return True
        b = bucket(client_id, _group_of_flag(self.name)) if b is None else b
        return self.rule.includes(client_id, b)

    def warnings(self) -> list[str]:
        found = "; ".join(self.foreign)
        if self.foreign and self.enabled:
            return [
                f"{self.name} has {len(self.foreign)} strategy(ies) without a clientId "
                f"constraint that cutover does not manage ({found}): it is ON FOR EVERY "
                "CLIENT. Remove them in the Unleash UI."
            ]
        if self.foreign:
            return [
                f"{self.name} has a strategy without a clientId constraint ({found}); it is "
                "off now, but enabling it would switch every client"
            ]
        if self.exists and not self.enabled and self.rule.switches_anyone:
            return [
                f"{self.name} is switched off outside cutover: its {self.rule.summary()} "
                "read as if absent until the next cutover change to it switches it on"
            ]
        return []


@dataclass(frozen=True)
class EntityFlags:
    """Both stage flags of one entity: the source of every client's stage."""

    entity: str
    shadow: FlagState
    new: FlagState
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rules(self) -> StageRules:
        return StageRules(self.entity, self.shadow.rule, self.new.rule)

    def stage_of(self, client_id: str, b: int | None = None) -> Stage:
        b = bucket(client_id, cohort_group(self.entity)) if b is None else b
        if self.new.includes(client_id, b):
            return Stage.NEW
        if self.shadow.includes(client_id, b):
            return Stage.SHADOW
        return Stage.OLD

    def flag(self, stage: Stage) -> FlagState:
        return self.new if stage is Stage.NEW else self.shadow

    def listed_clients(self) -> set[str]:
        """Every client a list names: pilot lists and exceptions of both flags."""
        return self.rules.listed()

    def warnings(self) -> list[str]:
        return self.shadow.warnings() + self.new.warnings()


def feature(flag: str, rule: StageRule, *, description: str = "") -> dict[str, Any]:
    """A flag in Unleash's client-features format (what the SDK bootstraps from).

    On exactly when the rule switches anyone; an empty rule is off with no strategy.
    """
    return {
        "name": flag,
        "description": description,
        "type": "release",
        "project": "default",
        "enabled": rule.switches_anyone,
        "stale": False,
        "impressionData": False,
        "strategies": strategies_for(flag, rule),
        "variants": [],
    }


def describe(entity: str, stage: Stage) -> str:
    what = {
        Stage.SHADOW: "read RethinkDB and compare the SQL store in the background",
        Stage.NEW: "read the SQL store",
    }[stage]
    return (
        f"cutover read stage for {entity}: the listed clientIds and the clientId cohort "
        f"(minus its NOT_IN exceptions) {what}. Managed by `cutover flags`; edits made "
        "here are shown as made outside cutover."
    )
