"""Read stages and the flag definitions that hold them.

A client's read stage per entity is stored as membership in two flags, each enabled
only through a strategy constrained on ``clientId IN [...]``:

* ``cutover.<entity>.new``: the client reads the SQL store;
* ``cutover.<entity>.shadow``: the client reads RethinkDB and the SQL store is
  compared in the background;
* in neither: ``old``, RethinkDB only (the default, and what every failure falls back to).

``new`` wins over ``shadow``, so a move between them adds the client to the target
flag before removing it from the other, and no reader ever sees it pass through ``old``.
The Unleash server and the embedded file hold exactly the same definitions (the
``/api/client/features`` format), which is why both evaluate the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

#: The Unleash context field every stage flag is constrained on.
CONTEXT_FIELD = "clientId"
FLAG_PREFIX = "cutover"
STRATEGY = "flexibleRollout"
STRATEGY_TITLE = "cutover: clients at this stage (managed by `cutover flags`)"


class Stage(StrEnum):
    OLD = "old"
    SHADOW = "shadow"
    NEW = "new"


#: The stages that are held in a flag (``old`` is the absence of both).
FLAGGED = (Stage.SHADOW, Stage.NEW)


class FlagError(RuntimeError):
    """A flag could not be read or changed; the message says which and why."""


class ClientIdError(ValueError):
    """A client id that could never match exactly (empty, padded, control characters)."""


def flag_name(entity: str, stage: Stage) -> str:
    """``cutover.<entity>.<stage>`` (URL-friendly, as Unleash requires)."""
    if stage is Stage.OLD:
        raise ValueError("the old stage has no flag: it is the absence of both")
    return f"{FLAG_PREFIX}.{entity}.{stage.value}"


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


def constraint(ids: Iterable[str]) -> dict[str, Any]:
    return {
        "contextName": CONTEXT_FIELD,
        "operator": "IN",
        "values": sorted(set(ids)),
        "caseInsensitive": False,
        "inverted": False,
    }


def strategy(flag: str, ids: Iterable[str]) -> dict[str, Any]:
    """The one strategy of a stage flag: 100% of the listed clients, nobody else."""
    values = sorted(set(ids))
    if not values:
        raise FlagError(f"{flag}: a strategy needs at least one client (Unleash rejects [])")
    return {
        "name": STRATEGY,
        "title": STRATEGY_TITLE,
        "parameters": {"rollout": "100", "stickiness": "default", "groupId": flag},
        "constraints": [constraint(values)],
    }


def constrained_ids(strat: Mapping[str, Any]) -> frozenset[str] | None:
    """The ids a strategy is limited to, or None when it does not limit ``clientId``.

    Only a non-inverted, case-sensitive ``clientId IN`` with values counts: anything
    else (no constraint, NOT_IN, another field only) may switch every client.
    """
    for c in strat.get("constraints") or ():
        if (
            c.get("contextName") == CONTEXT_FIELD
            and c.get("operator") == "IN"
            and not c.get("inverted")
            and not c.get("caseInsensitive")
            and c.get("values")
        ):
            return frozenset(str(v) for v in c["values"])
    return None


@dataclass(frozen=True)
class FlagState:
    """One stage flag in one environment, as the admin side sees it."""

    name: str
    exists: bool = False
    enabled: bool = False
    ids: frozenset[str] = frozenset()
    #: Active strategies that do not constrain ``clientId``: they switch everyone.
    unconstrained: int = 0

    @classmethod
    def from_strategies(
        cls, name: str, enabled: bool, strategies: Iterable[Mapping[str, Any]]
    ) -> FlagState:
        ids: set[str] = set()
        loose = 0
        for strat in strategies:
            if strat.get("disabled"):
                continue
            limited = constrained_ids(strat)
            if limited is None:
                loose += 1
            else:
                ids |= limited
        return cls(name, True, enabled, frozenset(ids), loose)

    def includes(self, client_id: str) -> bool:
        return self.enabled and (self.unconstrained > 0 or client_id in self.ids)

    def warnings(self) -> list[str]:
        if self.unconstrained and self.enabled:
            return [
                f"{self.name} has {self.unconstrained} strategy(ies) without a clientId "
                "constraint: it is ON FOR EVERY CLIENT. Remove them in the Unleash UI."
            ]
        if self.unconstrained:
            return [
                f"{self.name} has a strategy without a clientId constraint; it is off now, "
                "but enabling it would switch every client"
            ]
        return []


@dataclass(frozen=True)
class EntityFlags:
    """Both stage flags of one entity: the source of every client's stage."""

    entity: str
    shadow: FlagState
    new: FlagState
    extra: dict[str, Any] = field(default_factory=dict)

    def stage_of(self, client_id: str) -> Stage:
        if self.new.includes(client_id):
            return Stage.NEW
        if self.shadow.includes(client_id):
            return Stage.SHADOW
        return Stage.OLD

    def flag(self, stage: Stage) -> FlagState:
        return self.new if stage is Stage.NEW else self.shadow

    def listed_clients(self) -> set[str]:
        return set(self.shadow.ids) | set(self.new.ids)

    def warnings(self) -> list[str]:
        return self.shadow.warnings() + self.new.warnings()


def feature(flag: str, ids: Iterable[str], *, description: str = "") -> dict[str, Any]:
    """A flag in Unleash's client-features format (what the SDK bootstraps from).

    With no ids the flag is off with no strategy: it can never switch anyone.
    """
    values = sorted(set(ids))
    return {
        "name": flag,
        "description": description,
        "type": "release",
        "project": "default",
        "enabled": bool(values),
        "stale": False,
        "impressionData": False,
        "strategies": [strategy(flag, values)] if values else [],
        "variants": [],
    }


def describe(entity: str, stage: Stage) -> str:
    what = {
        Stage.SHADOW: "read RethinkDB and compare the SQL store in the background",
        Stage.NEW: "read the SQL store",
    }[stage]
    return (
        f"cutover read stage for {entity}: listed clientIds {what}. Managed by "
        "`cutover flags`; edit only the clientId list."
    )
