"""Rollout plans: every client of an entity to ``new`` in ordered waves, with guardrails.

**Waves.** A plan is an ordered list of waves: first, optionally, the *pilot*, an
explicit list of clients (the busiest ones, or a file; within the list limit), then
*cohorts* of growing percentages (e.g. 1, 10, 50, 100). A cohort wave at p% moves the
clients whose bucket (the SDK's hash, :func:`flags.stages.bucket`) lies between the
``new`` cohort's percentage before the wave and p, minus the held-back clients. Each
wave goes through:

1. **check**: the gate's verdict for every client the wave will switch (a dry
   ``flags cohort ... new P``); a refusal pauses the plan and changes nothing;
2. **shadow**: the wave's clients read RethinkDB and compare the SQL store
   (``flags cohort ... shadow P``, or the pilot clients' ``flags set ... shadow``);
3. **bake** for ``bake_s``, the guardrails evaluated every tick;
4. **switch** to ``new`` (``flags cohort ... new P``: the gate applies again);
5. **watch** for ``watch_s``, the guardrails still evaluated; then the next wave.

Every flag change goes through :class:`~flags.service.FlagService`, so it is gated,
ordered and audited exactly like the same command typed by hand (the audit's reason
names the plan and the wave).

**Guardrails.** Over the wave's clients, from the counts every API process adds to the
SQL store (:mod:`flags.evidence`): the shadow mismatch rate (comparisons that found a
persisting difference) and the read API's 5xx rate (responses at ``shadow``/``new``),
both counted from the wave's start (the counts at its start are its *baseline*,
subtracted from every reading, so an earlier attempt's counts never count again).
Past ``rollout_max_mismatch_rate`` (after ``rollout_min_comparisons`` comparisons) or
``rollout_max_error_rate`` (after ``rollout_min_responses`` responses), the wave rolls
back by itself: the cohorts go back to their percentages before the wave (lowered
only, never raised) or the pilot clients back to ``old`` (held there), through the
service, audited with the threshold and the figures; the plan pauses with the same
words. Counts reach the store within ``shadow_evidence_flush_s`` of each response.

**State machine** (per wave, recorded in :mod:`flags.rollout_state`):
``pending -> shadowing -> baking -> switching -> watching -> (next wave) pending``, and
``rolling_back -> pending`` (plan paused) when a guardrail trips. ``shadowing``,
``switching`` and ``rolling_back`` are *intents*: recorded before their flag change,
replaced by the next phase after it. Each change is idempotent (a cohort already at
its percentage, a client already at its stage, is no change and no audit row), so a
run that dies anywhere, SIGKILL included, resumes by doing its recorded phase again:
a crash between "flags changed" and "state recorded" re-applies a change that is
already there (nothing happens) and records it. No wave is repeated or skipped. A bake
resumes where it was (its start is recorded).

**Changed outside the plan.** Before each change and at every tick, the cohorts must
hold what the plan set (or, during an intent, what it is about to set). Anything else
(``flags kill``, a cohort edited in Unleash's UI) stops the plan (``stopped``), naming
the change. ``flags kill`` also marks the plan stopped itself; a run whose step raced
with it applies the kill again.

**Edits.** A plan that has started cannot be edited: ``rollout plan`` with another
definition is refused until it ends. ``rollout abort`` ends it, leaving every client
where it is; the next plan starts from the stages the flags hold (waves already
reached are done at once).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from core.clock import now_utc
from core.redaction import redact
from stores.runtime import Runtime
from stores.sql import StoreUnavailable

from . import rollout_state as state
from .evidence import (
    OUTCOME_STAGES,
    Counts,
    Outcomes,
    ShadowPolicy,
    bucket_start,
    outcomes_per_client,
    per_client,
    span,
)
from .gate import GateRefused
from .rollout_state import PlanRow, RolloutError
from .service import FlagService, default_actor
from .stages import (
    FLAGGED,
    EntityFlags,
    FlagError,
    InputError,
    ListLimitError,
    Stage,
    bucket,
    check_client_id,
    check_percent,
    cohort_group,
    flag_name,
)

DEFAULT_WAVES = (1, 10, 50, 100)
DEFAULT_BAKE_S = 1800.0
#: Blocked clients a refusal names (every one of them is in the gate's file or --json).
NAMED = 5


class PlanInputError(InputError):
    """A plan definition that cannot be run as given; nothing was changed."""


# -- the definition ------------------------------------------------------------------------
def parse_waves(text: str | Iterable[Any]) -> tuple[int, ...]:
    """Cohort percentages, e.g. ``"1,10,50,100"``: whole numbers 1..100, increasing."""
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    if not parts or any(p == "" for p in parts):
        raise PlanInputError(
            f"wave list {text!r} is empty or has an empty entry; give increasing "
            "percentages such as 1,10,50,100"
        )
    waves = tuple(check_percent(p) for p in parts)  # PercentError outside 0..100
    if waves[0] < 1:
        raise PlanInputError("a wave of 0% moves nobody: waves are percentages 1..100")
    for a, b in itertools.pairwise(waves):
        if b <= a:
            raise PlanInputError(
                f"wave list {text!r}: each wave must be larger than the one before "
                f"({b}% after {a}%)"
            )
    return waves


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?", re.IGNORECASE)
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | float) -> float:
    """Seconds from ``30m``, ``90s``, ``1h30m``, ``0`` or a bare number of seconds."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        raw = text.strip()
        pos, seconds = 0, 0.0
        for match in _DURATION.finditer(raw):
            bare = match.group(2) is None  # a bare number only as the whole text
            if match.start() != pos or (bare and (pos != 0 or match.end() != len(raw))):
                break
            seconds += float(match.group(1)) * _UNIT_S[(match.group(2) or "s").lower()]
            pos = match.end()
        if not raw or pos != len(raw):
            raise PlanInputError(
                f"duration {text!r} is not a length of time such as 30m, 90s, 1h30m or 0"
            )
    if seconds < 0:
        raise PlanInputError(f"duration {text!r} is negative")
    return seconds


@dataclass(frozen=True)
class Wave:
    """One wave: the pilot (``pilot`` clients) or a cohort (``percent``)."""

    index: int
    percent: int | None = None
    pilot: tuple[str, ...] = ()

    @property
    def is_pilot(self) -> bool:
        return self.percent is None

    @property
    def label(self) -> str:
        if not self.is_pilot:
            return f"cohort {self.percent}%"
        n = len(self.pilot)
        return f"pilot ({n} client{'' if n == 1 else 's'})"


@dataclass(frozen=True)
class PlanSpec:
    """What a plan does: the waves, the bake in ``shadow`` and the watch in ``new``."""

    percents: tuple[int, ...] = DEFAULT_WAVES
    pilot: tuple[str, ...] = ()
    bake_s: float = DEFAULT_BAKE_S
    watch_s: float | None = None

    @property
    def watch(self) -> float:
        return self.bake_s if self.watch_s is None else self.watch_s

    def waves(self) -> list[Wave]:
        out = [Wave(0, pilot=self.pilot)] if self.pilot else []
        out += [Wave(len(out) + i, percent=p) for i, p in enumerate(self.percents)]
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "waves": list(self.percents),
            "pilot": list(self.pilot),
            "bake_s": self.bake_s,
            "watch_s": self.watch,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PlanSpec:
        return cls(
            tuple(int(p) for p in data["waves"]),
            tuple(str(c) for c in data.get("pilot") or ()),
            float(data["bake_s"]),
            float(data["watch_s"]),
        )

    def describe(self) -> str:
        waves = ", ".join(w.label for w in self.waves())
        return f"{waves}; bake {span(self.bake_s)} in shadow, watch {span(self.watch)} in new"


def read_pilot_file(path: Path) -> list[str]:
    """Client ids from a file, one per line (blank lines and ``#`` comments skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanInputError(f"cannot read the pilot file {path}: {exc}") from None
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(line.rstrip("\r\n"))
    return out


# -- guardrails -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """The guardrails' thresholds (settings ``rollout_*``)."""

    max_mismatch_rate: float = 0.001
    min_comparisons: int = 1
    max_error_rate: float = 0.01
    min_responses: int = 100

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        return cls(
            settings.rollout_max_mismatch_rate,
            settings.rollout_min_comparisons,
            settings.rollout_max_error_rate,
            settings.rollout_min_responses,
        )


@dataclass(frozen=True)
class Figures:
    """A wave's counts since it started (baseline subtracted)."""

    comparisons: int = 0
    mismatches: int = 0
    served: int = 0
    server_errors: int = 0

    def minus(self, other: Figures) -> Figures:
        return Figures(
            max(0, self.comparisons - other.comparisons),
            max(0, self.mismatches - other.mismatches),
            max(0, self.served - other.served),
            max(0, self.server_errors - other.server_errors),
        )

    @property
    def mismatch_rate(self) -> float | None:
        return self.mismatches / self.comparisons if self.comparisons else None

    @property
    def error_rate(self) -> float | None:
        return self.server_errors / self.served if self.served else None

    def to_json(self) -> dict[str, Any]:
        return {
            "comparisons": self.comparisons,
            "mismatches": self.mismatches,
            "mismatch_rate": self.mismatch_rate,
            "served": self.served,
            "server_errors": self.server_errors,
            "error_rate": self.error_rate,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Figures:
        data = data or {}
        return cls(
            int(data.get("comparisons", 0)),
            int(data.get("mismatches", 0)),
            int(data.get("served", 0)),
            int(data.get("server_errors", 0)),
        )


def judge(figures: Figures, limits: Limits, wave: Wave, since: datetime) -> str | None:
    """Which threshold the figures cross, in words with the figures; None when none."""
    when = f"since wave {wave.index + 1} ({wave.label}) started at {since:%Y-%m-%d %H:%M:%S}Z"
    rate = figures.mismatch_rate
    if (
        rate is not None
        and figures.comparisons >= limits.min_comparisons
        and rate > limits.max_mismatch_rate
    ):
        return (
            f"guardrail tripped: shadow mismatch rate {rate:.2%} ({figures.mismatches} of "
            f"{figures.comparisons} comparisons of the wave's clients {when}) is above "
            f"the limit of {limits.max_mismatch_rate:.2%} (CUTOVER_ROLLOUT_MAX_MISMATCH_RATE)"
        )
    rate = figures.error_rate
    if rate is not None and figures.served >= limits.min_responses and rate > limits.max_error_rate:
        return (
            f"guardrail tripped: 5xx rate {rate:.2%} ({figures.server_errors} of "
            f"{figures.served} responses to the wave's clients {when}) is above the limit "
            f"of {limits.max_error_rate:.2%} (CUTOVER_ROLLOUT_MAX_ERROR_RATE, counted from "
            f"{limits.min_responses} responses)"
        )
    return None


def wave_members(
    wave: Wave, lower: int, pilot: Collection[str], group: str
) -> Callable[[str], bool]:
    """Whether a client belongs to ``wave``: a pilot client, or (a cohort wave) a client
    whose bucket is in ``(lower, percent]`` and that is not a pilot client of the plan.
    Held-back clients in that range read ``old``, where no outcome is counted."""
    if wave.is_pilot:
        chosen = set(wave.pilot)
        return chosen.__contains__
    pilots, hi = set(pilot), wave.percent or 0
    return lambda c: c not in pilots and lower < bucket(c, group) <= hi


def measure(
    runtime: Runtime,
    entity: str,
    members: Callable[[str], bool],
    since: datetime,
    clients: Collection[str] | None = None,
) -> Figures:
    """The members' counts from bucket ``since`` on (two grouped queries)."""
    kw: dict[str, Any] = {"since": since, "stages": OUTCOME_STAGES, "client_ids": clients}
    evidence = per_client(runtime.sql, entity, **kw)
    outcomes = outcomes_per_client(runtime.sql, entity, **kw)
    c = sum((v for k, v in evidence.items() if members(k)), Counts())
    o = sum((v for k, v in outcomes.items() if members(k)), Outcomes())
    return Figures(c.comparisons, c.mismatches, o.served, o.server_errors)


# -- the preview (--dry-run) ------------------------------------------------------------------
@dataclass(frozen=True)
class WavePreview:
    wave: Wave
    #: Known clients the wave would switch to new, and those the gate refuses now.
    to_new: int
    blocked: list[tuple[str, str]]
    #: Nothing left to move: the cohorts (or the pilot clients) are there already.
    reached: bool

    def verdict(self) -> str:
        if self.reached:
            return "already reached"
        if not self.to_new:
            return "no known client to switch"
        if not self.blocked:
            return f"gate: all {self.to_new} pass"
        first = "; ".join(r for _, r in self.blocked[:NAMED])
        return f"gate: {len(self.blocked)} of {self.to_new} blocked (first: {first})"

    def to_json(self) -> dict[str, Any]:
        return {
            "wave": self.wave.index + 1,
            "label": self.wave.label,
            "percent": self.wave.percent,
            "pilot": list(self.wave.pilot),
            "to_new": self.to_new,
            "blocked": len(self.blocked),
            "blocked_clients": [{"client": c, "reason": r} for c, r in self.blocked],
            "reached": self.reached,
            "verdict": self.verdict(),
        }


@dataclass(frozen=True)
class Preview:
    entity: str
    spec: PlanSpec
    known: int
    held: int
    waves: list[WavePreview]

    def to_json(self) -> dict[str, Any]:
        return {
            "entity": self.entity,
            "definition": self.spec.to_json(),
            "known_clients": self.known,
            "held_back": self.held,
            "waves": [w.to_json() for w in self.waves],
            "note": "gate verdicts are as of now; each wave is checked again when it starts",
        }


# -- the plan, and the run that carries it out -------------------------------------------------
def _percents(flags: EntityFlags) -> dict[str, int]:
    return {s.value: flags.flag(s).rule.percent for s in FLAGGED}


class Rollout:
    """Plans of one runtime: define, preview, run, pause, resume, abort, report.

    ``clock`` and ``sleep`` time the bakes (tests replace them); the lease always
    uses the machine's clock.
    """

    def __init__(
        self,
        runtime: Runtime,
        service: FlagService | None = None,
        *,
        actor: str | None = None,
        clock: Callable[[], datetime] = now_utc,
        sleep: Callable[[float], None] = time.sleep,
        say: Callable[[str], None] | None = None,
        owner: str | None = None,
    ) -> None:
        self.runtime = runtime
        self.service = service or FlagService(runtime)
        self.actor = actor or default_actor()
        self.clock = clock
        self.sleep = sleep
        self.say = say or (lambda _msg: None)
        self._owner = owner
        settings = runtime.settings
        self.limits = Limits.from_settings(settings)
        self.ttl_s = settings.rollout_lease_ttl_s
        self.tick_s = min(settings.rollout_tick_s, self.ttl_s / 3)
        self.bucket_s = settings.shadow_evidence_bucket_s
        self._ready = False

    def close(self) -> None:
        self.service.close()

    @property
    def owner(self) -> str:
        if self._owner is None:
            from backfill.partitions import new_owner

            self._owner = new_owner("/rollout")
        return self._owner

    def _entity(self, entity: str) -> str:
        return self.runtime.cfg.entity(entity).name  # ConfigError names the known ones

    def _ensure(self) -> None:
        if not self._ready:
            self.service.ensure_schema()
            state.ensure(self.runtime.sql)
            self._ready = True

    def load(self, entity: str) -> PlanRow | None:
        self._ensure()
        return state.load(self.runtime.sql, self._entity(entity))

    # -- defining ---------------------------------------------------------------------
    def spec(
        self,
        entity: str,
        *,
        waves: str | Iterable[Any] | None = None,
        bake: str | float | None = None,
        watch: str | float | None = None,
        pilot: Iterable[str] = (),
        pilot_busiest: int = 0,
    ) -> PlanSpec:
        """A checked definition: waves, durations, pilot clients (known, within the list
        limit, not already at ``new``; ``pilot_busiest`` adds the busiest clients)."""
        name = self._entity(entity)
        percents = DEFAULT_WAVES if waves is None else parse_waves(waves)
        bake_s = DEFAULT_BAKE_S if bake is None else parse_duration(bake)
        watch_s = None if watch is None else parse_duration(watch)
        chosen = list(dict.fromkeys(check_client_id(c) for c in pilot))
        if pilot_busiest < 0:
            raise PlanInputError("--pilot-busiest takes a number of clients (0 or more)")
        flags = self.service.backend.read(name)
        if chosen or pilot_busiest:
            self._ensure()
            known = self.service.known_clients(name) | flags.listed_clients()
            unknown = [c for c in chosen if c not in known]
            if unknown:
                raise PlanInputError(
                    f"pilot client(s) unknown for {name}: {', '.join(map(repr, unknown[:10]))}"
                    " (neither store nor the backfill ledger holds them; ids match exactly)"
                )
            if pilot_busiest:
                chosen += [
                    c for c in self.busiest(name, pilot_busiest + len(chosen)) if c not in chosen
                ][:pilot_busiest]
        chosen = [c for c in chosen if flags.stage_of(c) is not Stage.NEW]
        limit = self.service.backend.list_limit()
        room = limit - max(len(flags.new.rule.pilot), len(flags.shadow.rule.pilot))
        if len(chosen) > room:
            raise PlanInputError(
                f"the pilot would put {len(chosen)} clients on lists that hold at most "
                f"{limit} (UNLEASH_CONSTRAINT_VALUES_LIMIT; {limit - room} listed already): "
                "pilot fewer clients; the cohorts move everyone else"
            )
        return PlanSpec(percents, tuple(chosen), bake_s, watch_s)

    def busiest(self, entity: str, n: int) -> list[str]:
        """The ``n`` busiest clients not at ``new``: most shadow comparisons and read
        responses over the gate's window, then most documents in the old store."""
        name = self._entity(entity)
        flags = self.service.backend.read(name)
        policy = ShadowPolicy.from_settings(self.runtime.settings)
        since = policy.since(now_utc())
        evidence = per_client(self.runtime.sql, name, since=since)
        served = outcomes_per_client(self.runtime.sql, name, since=since)
        rows = self.runtime.rethink.count_per_client(self.runtime.cfg.entity(name))
        candidates = set(evidence) | set(served) | set(rows)

        def busy(c: str) -> tuple[int, int, str]:
            reads = evidence.get(c, Counts()).comparisons + served.get(c, Outcomes()).served
            return (-reads, -rows.get(c, 0), c)

        ranked = sorted((c for c in candidates if flags.stage_of(c) is not Stage.NEW), key=busy)
        return ranked[:n]

    def plan(self, entity: str, spec: PlanSpec) -> tuple[PlanRow, bool]:
        """Record ``spec`` as the entity's plan; ``(row, created)``.

        The same definition as the active plan is no change. Another one is refused
        while a plan has started and not ended (abort it first); a plan that never
        ran, or has ended, is replaced.
        """
        name = self._entity(entity)
        self._ensure()
        sql = self.runtime.sql
        current = state.load(sql, name)
        if current is not None and current.state in state.ACTIVE:
            if PlanSpec.from_json(current.definition).to_json() == spec.to_json():
                return current, False
            if current.state != state.PLANNED or current.held():
                raise RolloutError(
                    f"refused: the {name} plan {current.plan_id[:8]} is {current.state} at "
                    f"wave {current.wave + 1} ({current.phase}); a plan is not edited while "
                    f"it runs. `cutover rollout abort {name}` ends it (every client stays "
                    "where it is), then plan again: the new plan starts from the stages "
                    "the flags hold. Nothing was changed"
                )
        flags = self.service.backend.read(name)
        row = state.create(
            sql,
            name,
            spec.to_json(),
            _percents(flags),
            self.actor,
            replace_states=(state.PLANNED, state.DONE, state.ABORTED, state.STOPPED),
        )
        return row, True

    def preview(self, entity: str, spec: PlanSpec) -> Preview:
        """Each wave's known clients to switch and the gate's verdict on them, now."""
        name = self._entity(entity)
        self._ensure()
        flags = self.service.backend.read(name)
        rules = flags.rules
        known = self.service.known_clients(name) | flags.listed_clients() | set(spec.pilot)
        buckets = {c: rules.bucket(c) for c in known}
        per_wave: list[tuple[Wave, list[str], bool]] = []
        for wave in spec.waves():
            after = rules
            if wave.is_pilot:
                for client in wave.pilot:
                    after = after.moved(client, Stage.NEW)
            elif (wave.percent or 0) > rules.new.percent:
                p = wave.percent or 0
                after = after.with_percent(Stage.SHADOW, max(p, rules.shadow.percent))
                after = after.with_percent(Stage.NEW, p)
            moving = sorted(
                c
                for c, b in buckets.items()
                if after.stage_of(c, b) is Stage.NEW and rules.stage_of(c, b) is not Stage.NEW
            )
            per_wave.append((wave, moving, after == rules))
            rules = after
        everyone = sorted({c for _, moving, _ in per_wave for c in moving})
        decisions = self.service.gate().check_many(name, everyone, now_utc()) if everyone else {}
        waves = [
            WavePreview(
                wave,
                len(moving),
                [(c, decisions[c].reason) for c in moving if not decisions[c].allowed],
                reached,
            )
            for wave, moving, reached in per_wave
        ]
        return Preview(name, spec, len(known), len(flags.rules.exceptions()), waves)

    # -- operator actions -------------------------------------------------------------
    def pause(self, entity: str, reason: str | None = None) -> PlanRow:
        name = self._entity(entity)
        self._ensure()
        why = f"paused by {self.actor}" + (f": {reason}" if reason else "")
        row = state.set_state(
            self.runtime.sql,
            name,
            state.PAUSED,
            why,
            self.actor,
            only_from=state.RUNNABLE,
            event="paused",
        )
        return row or self._not_in(name, "paused", state.RUNNABLE)

    def resume(self, entity: str) -> PlanRow:
        name = self._entity(entity)
        self._ensure()
        row = state.set_state(
            self.runtime.sql,
            name,
            state.RUNNING,
            None,
            self.actor,
            only_from=(state.PAUSED,),
            event="resumed",
        )
        return row or self._not_in(name, "resumed", (state.PAUSED,))

    def abort(self, entity: str, reason: str | None = None) -> PlanRow:
        """End the plan; every client stays where it is (the flags are not touched)."""
        name = self._entity(entity)
        self._ensure()
        why = f"aborted by {self.actor}" + (f": {reason}" if reason else "")
        row = state.set_state(
            self.runtime.sql,
            name,
            state.ABORTED,
            why,
            self.actor,
            only_from=state.ACTIVE,
            event="aborted",
        )
        return row or self._not_in(name, "aborted", state.ACTIVE)

    def _not_in(self, entity: str, verb: str, states: Iterable[str]) -> PlanRow:
        row = state.load(self.runtime.sql, entity)
        if row is None:
            raise RolloutError(f"no rollout plan for {entity}: nothing {verb}")
        raise RolloutError(
            f"the {entity} plan is {row.state}, not {' or '.join(states)}: nothing {verb}"
        )

    # -- running ----------------------------------------------------------------------
    def run(self, entity: str) -> PlanRow:
        """Carry the plan out until it is done, paused or stopped; the row at the end.

        LeaseHeld when another run holds it; RolloutError when there is nothing to run.
        """
        name = self._entity(entity)
        self._ensure()
        row = state.acquire(self.runtime.sql, name, self.owner, self.ttl_s)
        self.say(f"{name}: running plan {row.plan_id[:8]} from wave {row.wave + 1} ({row.phase})")
        state.add_event(self.runtime.sql, row, "run", self.actor, f"lease taken by {self.owner}")
        try:
            return _Run(self, row).go()
        finally:
            with contextlib.suppress(StoreUnavailable):  # then the lease expires by itself
                state.release(self.runtime.sql, name, self.owner)

    def report(self, entity: str) -> dict[str, Any]:
        """The plan, its waves with their progress and guardrail figures, the lease and
        the recent events: what `rollout status` and the admin API show."""
        return report(self, entity)


class _Stop(Exception):
    """The run must stop: the plan is no longer ``running`` under this run's lease."""


@dataclass
class _Run:
    """One run of one plan (the lease held): one phase after another."""

    r: Rollout
    row: PlanRow
    spec: PlanSpec = field(init=False)
    waves: list[Wave] = field(init=False)

    def __post_init__(self) -> None:
        self.spec = PlanSpec.from_json(self.row.definition)
        self.waves = self.spec.waves()

    @property
    def name(self) -> str:
        return self.row.entity

    # -- the loop ---------------------------------------------------------------------
    def go(self) -> PlanRow:
        try:
            while self.row.state == state.RUNNING:
                if self.row.wave >= len(self.waves):
                    self._finish()
                    continue
                step = {
                    state.PENDING: self._start_wave,
                    state.SHADOWING: self._shadow,
                    state.BAKING: self._bake,
                    state.SWITCHING: self._switch,
                    state.WATCHING: self._watch,
                    state.ROLLING_BACK: self._roll_back,
                }[self.row.phase]
                step(self.waves[self.row.wave])
        except _Stop:
            pass
        except (ListLimitError, GateRefused, InputError) as exc:
            self._pause(
                f"wave {self.row.wave + 1} ({self.row.phase}) was refused: "
                f"{redact(str(exc))}. `cutover rollout resume {self.name}` tries again"
            )
        except FlagError as exc:
            self._pause(
                f"the flag backend failed during wave {self.row.wave + 1} "
                f"({self.row.phase}): {redact(str(exc))}. Every client keeps the stage it "
                "had (API processes keep their last known stages); "
                f"`cutover rollout resume {self.name}` carries on where it stopped"
            )
        found = state.load(self.r.runtime.sql, self.name)
        return found or self.row

    # -- writes under the lease -------------------------------------------------------
    def _record(
        self,
        values: dict[str, Any],
        event: str | None = None,
        detail: str | None = None,
        figures: Any = None,
        *,
        applied: str | None = None,
    ) -> None:
        """Write ``values`` (and ``event``) under the lease, or stop. ``applied`` names
        the flag change just made, when this records its phase: if the plan left
        ``running`` meanwhile, that change is kept in the plan's events."""
        ok = state.update_held(
            self.r.runtime.sql,
            self.row,
            self.r.owner,
            self.r.ttl_s,
            values,
            event=(event, detail, figures) if event else None,
            actor=self.r.actor,
        )
        if not ok:
            self._lost(applied)
        if event:
            self.r.say(f"  wave {self.row.wave + 1}: {event}" + (f": {detail}" if detail else ""))
        self.row = replace(self.row, **values)

    def _lost(self, applied: str | None = None) -> None:
        """The plan left ``running`` under this lease: say why and stop. ``applied``
        names a change this run made just before noticing (kept in the events)."""
        now = state.load(self.r.runtime.sql, self.name)
        if now is None or now.plan_id != self.row.plan_id:
            self.r.say(f"{self.name}: the plan was replaced; this run stops")
            raise _Stop
        self.row = now
        if applied:
            state.add_event(
                self.r.runtime.sql,
                now,
                "applied-after-stop",
                self.r.actor,
                f"{applied} was applied as the plan became {now.state}",
                None,
            )
        if now.state == state.STOPPED and (now.reason or "").startswith(state.KILLED) and applied:
            self.r.service.kill(
                self.name,
                actor=self.r.actor,
                reason=f"rollout: the kill switch again, over {applied} that raced with it",
            )
        self.r.say(f"{self.name}: the plan is {now.state} ({now.reason}); this run stops")
        raise _Stop

    def _pause(
        self, reason: str, values: dict[str, Any] | None = None, figures: Any = None
    ) -> None:
        row = state.set_state(
            self.r.runtime.sql,
            self.name,
            state.PAUSED,
            reason,
            self.r.actor,
            only_from=(state.RUNNING,),
            event="paused",
            figures=figures,
            values=values,
            plan_id=self.row.plan_id,
        )
        self.row = row or state.load(self.r.runtime.sql, self.name) or self.row
        self.r.say(f"{self.name}: paused at wave {self.row.wave + 1}")

    def _stop(self, reason: str) -> None:
        row = state.set_state(
            self.r.runtime.sql,
            self.name,
            state.STOPPED,
            reason,
            self.r.actor,
            only_from=(state.RUNNING,),
            event="stopped",
            plan_id=self.row.plan_id,
        )
        self.row = row or state.load(self.r.runtime.sql, self.name) or self.row
        self.r.say(f"{self.name}: stopped: {reason}")
        raise _Stop

    # -- the flags as the plan left them ----------------------------------------------
    def _flags(self, allowed: dict[str, set[int]] | None = None) -> EntityFlags:
        """The flags now; stops the plan when a cohort is not where the plan put it
        (``allowed`` adds what the phase in hand may already have set)."""
        flags = self.r.service.backend.read(self.name)
        for warning in flags.warnings():  # switched off, or a strategy cutover did not make
            self._stop(f"the flags were changed outside the plan: {warning}")
        expected = self.row.expected or {}
        for stage in FLAGGED:
            have = flags.flag(stage).rule.percent
            ok = {expected.get(stage.value, 0)} | (allowed or {}).get(stage.value, set())
            if have not in ok:
                self._stop(
                    f"the flags were changed outside the plan: {flag_name(self.name, stage)} "
                    f"has its cohort at {have}% where the plan set "
                    f"{expected.get(stage.value, 0)}%{self._last_step(stage)}. Every "
                    f"client stays where it is; `cutover rollout plan {self.name}` makes a "
                    "new plan from there"
                )
        return flags

    def _last_step(self, stage: Stage) -> str:
        steps = [s for s in self.r.service.audit.steps(self.name) if s.stage == stage.value]
        if not steps:
            return ""
        s = steps[-1]
        return f" (last change: {s.actor} at {s.at:%Y-%m-%d %H:%M:%S}Z: {s.reason or 'no reason'})"

    def _why(self, wave: Wave, what: str) -> str:
        where = f"wave {wave.index + 1}/{len(self.waves)} ({wave.label})"
        return f"rollout {self.row.plan_id[:8]} {where}: {what}"

    # -- the phases -------------------------------------------------------------------
    def _finish(self) -> None:
        flags = self._flags()
        held = flags.rules.exceptions()
        if flags.new.rule.percent == 100 and not held:
            end = "every client reads new: the legacy subscription may be dropped"
        else:
            end = f"the last wave is done; new cohort at {flags.new.rule.percent}%" + (
                f", {len(held)} held-back client(s) still read the old store "
                f"(`cutover flags except {self.name} CLIENT --release` lets them follow)"
                if held
                else ""
            )
        row = state.set_state(
            self.r.runtime.sql,
            self.name,
            state.DONE,
            end,
            self.r.actor,
            only_from=(state.RUNNING,),
            event="done",
            plan_id=self.row.plan_id,
        )
        if row is None:
            self._lost()
        self.row = row or self.row
        self.r.say(f"{self.name}: plan done: {end}")

    def _start_wave(self, wave: Wave) -> None:
        flags = self._flags()
        before = _percents(flags)
        now = self.r.clock()
        if self._reached(wave, flags):
            self._record(
                {"wave": wave.index + 1, "phase": state.PENDING, "guard": None},
                "reached",
                f"{wave.label}: already there, nothing to move",
            )
            return
        blocked = self._gate(wave, flags, now)
        if blocked:
            self._pause(blocked)
            raise _Stop
        members = self._members(wave, before)
        baseline = measure(
            self.r.runtime,
            self.name,
            members,
            bucket_start(now, self.r.bucket_s),
            wave.pilot if wave.is_pilot else None,
        )
        self._record(
            {
                "phase": state.SHADOWING,
                "phase_at": now,
                "wave_started_at": now,
                "before": before,
                "baseline": baseline.to_json(),
                "guard": None,
            },
            "started",
            wave.label,
            baseline.to_json(),
        )

    def _reached(self, wave: Wave, flags: EntityFlags) -> bool:
        if wave.is_pilot:
            return all(flags.stage_of(c) is Stage.NEW for c in wave.pilot)
        return flags.new.rule.percent >= (wave.percent or 0)

    def _gate(self, wave: Wave, flags: EntityFlags, now: datetime) -> str | None:
        """Why the gate refuses the wave now (None: every client it switches passes)."""
        if wave.is_pilot:
            moving = [c for c in wave.pilot if flags.stage_of(c) is not Stage.NEW]
            decisions = self.r.service.gate().check_many(self.name, moving, now)
            blocked = [(c, d.reason) for c, d in sorted(decisions.items()) if not d.allowed]
            total, where = len(moving), ""
        else:
            plan = self.r.service.set_cohort(self.name, Stage.NEW, wave.percent or 0, dry_run=True)
            blocked, total = plan.blocked, len(plan.to_new)
            where = f"; all of them are listed in {plan.refused_path}" if plan.refused_path else ""
        if not blocked:
            return None
        first = "; ".join(r for _, r in blocked[:NAMED])
        return (
            f"the gate refuses wave {wave.index + 1} ({wave.label}): {len(blocked)} of the "
            f"{total} clients it would switch to new fail it (first: {first}){where}. "
            "Nothing was changed. Fix them (backfill, verify), hold them back (`cutover "
            f"flags except {self.name} CLIENT`), then `cutover rollout resume {self.name}`"
        )

    def _members(self, wave: Wave, before: dict[str, int] | None) -> Callable[[str], bool]:
        lower = (before or {}).get("new", 0)
        return wave_members(wave, lower, self.spec.pilot, cohort_group(self.name))

    def _shadow(self, wave: Wave) -> None:
        before = self.row.before or {}
        target = max(before.get("shadow", 0), wave.percent or 0)
        flags = self._flags({"shadow": {target}})
        self._held_or_stop()
        if wave.is_pilot:
            for client in wave.pilot:
                if flags.stage_of(client) is Stage.OLD:
                    self.r.service.set_stage(
                        self.name,
                        client,
                        Stage.SHADOW,
                        actor=self.r.actor,
                        reason=self._why(wave, "shadow"),
                    )
        else:
            self.r.service.set_cohort(
                self.name,
                Stage.SHADOW,
                target,
                actor=self.r.actor,
                reason=self._why(wave, "shadow"),
            )
        expected = {**(self.row.expected or {}), "shadow": target}
        self._record(
            {"phase": state.BAKING, "phase_at": self.r.clock(), "expected": expected},
            "shadowed",
            f"{wave.label} in shadow; baking {span(self.spec.bake_s)}",
            applied=f"the shadow step of {wave.label}",
        )

    def _held_or_stop(self) -> None:
        """Renew the lease right before a flag change (stops when it is no longer held)."""
        self._record({})

    def _bake(self, wave: Wave) -> None:
        self._observe(wave, self.spec.bake_s, state.SWITCHING)

    def _watch(self, wave: Wave) -> None:
        self._observe(wave, self.spec.watch, None)

    def _observe(self, wave: Wave, seconds: float, then: str | None) -> None:
        """Evaluate the guardrails every tick until ``seconds`` after the phase began,
        then move on (``then``: the next phase; None: the wave is done)."""
        assert self.row.phase_at is not None and self.row.wave_started_at is not None
        deadline = self.row.phase_at + timedelta(seconds=seconds)
        members = self._members(wave, self.row.before)
        since = bucket_start(self.row.wave_started_at, self.r.bucket_s)
        baseline = Figures.from_json(self.row.baseline)
        while True:
            flags = self._flags()
            if (
                wave.is_pilot
                and all(flags.stage_of(c) is Stage.OLD for c in wave.pilot)
                and not flags.rules.exceptions()
            ):
                self._stop(
                    "the flags were changed outside the plan: every pilot client reads "
                    "old again and none is held (the kill switch?)"
                )
            figures = measure(
                self.r.runtime,
                self.name,
                members,
                since,
                wave.pilot if wave.is_pilot else None,
            ).minus(baseline)
            tripped = judge(figures, self.r.limits, wave, self.row.wave_started_at)
            guard = {
                **figures.to_json(),
                "limits": self.r.limits.__dict__,
                "evaluated_at": self.r.clock().isoformat(),
                "phase": self.row.phase,
                "tripped": tripped,
            }
            if tripped:
                self._record(
                    {"phase": state.ROLLING_BACK, "guard": guard, "reason": tripped},
                    "tripped",
                    tripped,
                    guard,
                )
                return
            now = self.r.clock()
            if now >= deadline:
                if then is None:
                    self._record(
                        {"wave": wave.index + 1, "phase": state.PENDING, "guard": None},
                        "wave-done",
                        f"{wave.label} reads new",
                        guard,
                    )
                else:
                    self._record({"phase": then, "guard": guard}, "baked", wave.label, guard)
                return
            self._record({"guard": guard})
            self.r.sleep(min(self.r.tick_s, (deadline - now).total_seconds()))

    def _switch(self, wave: Wave) -> None:
        target = wave.percent or 0
        flags = self._flags({"new": {target}})
        self._held_or_stop()
        try:
            if wave.is_pilot:
                for client in wave.pilot:
                    if flags.stage_of(client) is Stage.SHADOW:
                        self.r.service.set_stage(
                            self.name,
                            client,
                            Stage.NEW,
                            actor=self.r.actor,
                            reason=self._why(wave, "new"),
                        )
            else:
                self.r.service.set_cohort(
                    self.name,
                    Stage.NEW,
                    target,
                    actor=self.r.actor,
                    reason=self._why(wave, "new"),
                )
        except GateRefused as exc:
            self._pause(
                f"the gate refused the switch of wave {wave.index + 1} ({wave.label}) to new: "
                f"{redact(str(exc))}. Its clients stay in shadow; fix or hold them, then "
                f"`cutover rollout resume {self.name}`"
            )
            raise _Stop from None
        expected = (
            {**(self.row.expected or {}), "new": target}
            if not wave.is_pilot
            else (self.row.expected or {})
        )
        self._record(
            {"phase": state.WATCHING, "phase_at": self.r.clock(), "expected": expected},
            "switched",
            f"{wave.label} reads new; watching {span(self.spec.watch)}",
            applied=f"the switch of {wave.label} to new",
        )

    def _roll_back(self, wave: Wave) -> None:
        """Send the wave's clients back to ``old``: each cohort to its percentage before
        the wave (lowered only: a kill or a lower edit meanwhile stays), the pilot
        clients to ``old`` (held); then pause with the guardrail's words."""
        reason = (self.row.guard or {}).get("tripped") or "guardrail tripped"
        why = self._why(wave, f"rolled back: {reason}")
        flags = self.r.service.backend.read(self.name)
        before = self.row.before or {}
        self._held_or_stop()
        if wave.is_pilot:
            for client in wave.pilot:
                if flags.stage_of(client) is not Stage.OLD:
                    self.r.service.rollback(self.name, client, actor=self.r.actor, reason=why)
        for stage in (Stage.NEW, Stage.SHADOW):  # new first: its clients pass by shadow
            have = flags.flag(stage).rule.percent
            to = min(have, before.get(stage.value, 0))
            if to != have:
                self.r.service.set_cohort(self.name, stage, to, actor=self.r.actor, reason=why)
        after = _percents(self.r.service.backend.read(self.name))
        self._pause(
            f"wave {wave.index + 1} ({wave.label}) rolled back by itself: {reason}",
            values={"phase": state.PENDING, "expected": after},
            figures=self.row.guard,
        )
        raise _Stop


# -- the report ---------------------------------------------------------------------------------
def report(r: Rollout, entity: str) -> dict[str, Any]:
    """See :meth:`Rollout.report`. Each wave's figures are the live ones of the current
    wave, else the last the plan recorded for it (when it baked, tripped or ended)."""
    name = r._entity(entity)
    row = r.load(name)
    if row is None:
        return {"entity": name, "plan": None}
    spec = PlanSpec.from_json(row.definition)
    history = state.events(r.runtime.sql, name, row.plan_id, limit=1000)
    figures: dict[int, Any] = {}
    trips: Counter[int] = Counter()
    for e in history:
        if e["event"] in ("baked", "tripped", "wave-done") and e["wave"] is not None:
            figures[e["wave"]] = e["figures"]
        if e["event"] == "tripped":
            trips[e["wave"]] += 1
    waves = []
    for wave in spec.waves():
        current = wave.index == row.wave and row.state != state.DONE
        progress = "done" if wave.index < row.wave else row.phase if current else "pending"
        waves.append(
            {
                "wave": wave.index + 1,
                "label": wave.label,
                "percent": wave.percent,
                "pilot": list(wave.pilot),
                "progress": progress,
                "started_at": row.wave_started_at.isoformat()
                if current and row.wave_started_at
                else None,
                "guard": (row.guard if current and row.guard else None) or figures.get(wave.index),
                "rolled_back": trips[wave.index],
            }
        )
    flags = r.service.backend.read(name)
    held = flags.rules.exceptions()
    return {
        "entity": name,
        "plan": {
            **row.to_json(),
            "definition": spec.to_json(),
            "describe": spec.describe(),
            "lease": {
                "owner": row.owner,
                "expires": row.lease_expires.isoformat() if row.lease_expires else None,
                "live": row.held(),
            },
        },
        "waves": waves,
        "limits": r.limits.__dict__,
        "flags": {
            "cohorts": _percents(flags),
            "exceptions": len(held),
            "everyone_new": flags.new.rule.percent == 100 and not held,
        },
        "events": [{**e, "at": e["at"].isoformat()} for e in history[-30:]],
    }


def plan_report(runtime: Runtime, entity: str) -> dict[str, Any]:
    """:meth:`Rollout.report` over ``runtime`` (read-only; for the admin API)."""
    rollout = Rollout(runtime)
    try:
        return rollout.report(entity)
    finally:
        rollout.close()
