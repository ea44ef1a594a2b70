"""Failure-log retention: how long entries are kept, and the purge that enforces it.

Each subscription declares in ``cutover.toml`` how long its entries are kept:
``failure_retention_days_replayed`` (default 30) and ``failure_retention_days_open``
(default 0); 0 keeps them forever. An entry's age runs from the moment that matters
for its status:

* a replayed entry, from its replay (``resolved_at``; ``last_seen`` if it has none);
* an open entry, from the last time it was seen failing (``last_seen``), so a message
  that is still redelivered never ages out.

An entry is past retention when that moment is strictly before ``now - days``.

Invariants:

* Nothing open is purged unless the caller asks for it (``include_open``, the CLI's
  ``--include-open``), whatever the configuration says.
* One selection (:class:`Rule`: one subscription, one status, one cutoff) drives both
  the survey a dry run reports and the deletes of the real run. With the same ``now``
  they select the same entries; entries only get younger meanwhile (a redelivery
  reopens one with a new ``last_seen``, a replay sets ``resolved_at``), and every
  delete checks the selection again, so a real run never deletes an entry the survey
  did not count.
* Deletes go in short transactions of at most :data:`BATCH` entries, so a large purge
  never holds locks that would stall the workers recording new failures.
* Only declared subscriptions are purged; entries of a name the config does not
  declare (a dropped subscription) are counted and kept.

The SQL is built through the store's dialect (``stores.sql``): the same text runs on
SQL Server, PostgreSQL and SQLite, and the T-SQL is checked offline.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from core.config import Config, Subscription
from stores.sql import Dialect, SqlStore

from . import audit
from .failures import Status
from .tables import FAILURES

#: Most entries one DELETE statement (and transaction) removes.
BATCH = 1000
STATUSES: tuple[Status, ...] = ("replayed", "open")


def retention_days(sub: Subscription, status: Status) -> int:
    """The declared retention of ``sub``'s entries of ``status``, in days (0: forever)."""
    if status == "open":
        return sub.failure_retention_days_open
    return sub.failure_retention_days_replayed


def _age(dialect: Dialect, status: Status) -> str:
    """The SQL expression of the moment an entry's age runs from (module docstring)."""
    q = dialect.quote
    if status == "open":
        return q("last_seen")
    return f"COALESCE({q('resolved_at')}, {q('last_seen')})"


@dataclass(frozen=True)
class Rule:
    """Entries of one subscription and one status whose age runs from before ``before``."""

    subscription: str
    status: Status
    days: int
    before: datetime

    def condition(self, dialect: Dialect) -> tuple[str, list[Any]]:
        """The WHERE condition selecting this rule's entries, and its parameters."""
        q = dialect.quote
        sql = (
            f"{q('subscription')} = ? AND {q('status')} = ? AND "
            f"{_age(dialect, self.status)} < {dialect.placeholder('datetime')}"
        )
        return sql, [self.subscription, self.status, dialect.to_db("datetime", self.before)]


@dataclass(frozen=True)
class Kept:
    """Entries a plan leaves alone whatever their age, and why."""

    subscription: str
    status: Status
    why: str


@dataclass(frozen=True)
class Plan:
    now: datetime
    rules: tuple[Rule, ...]
    kept: tuple[Kept, ...]
    older_than_days: int | None = None
    include_open: bool = False
    #: Every declared subscription, when the plan covers them all (else empty): entries
    #: of any other name in the log are then reported as undeclared.
    declared: frozenset[str] = frozenset()

    @property
    def subscriptions(self) -> list[str]:
        names = [r.subscription for r in self.rules] + [k.subscription for k in self.kept]
        return list(dict.fromkeys(names))


def plan(
    cfg: Config,
    names: Sequence[str] | None = None,
    *,
    now: datetime,
    include_open: bool = False,
    older_than_days: int | None = None,
) -> Plan:
    """What a purge at ``now`` selects: per subscription (``names`` or every declared
    one; an unknown name raises ConfigError) and status, a rule or the reason it is
    kept. ``older_than_days`` replaces the declared retention of both statuses."""
    if older_than_days is not None and older_than_days < 1:
        raise ValueError("older_than_days must be at least 1")
    subs = [cfg.subscription(n) for n in names] if names else list(cfg.subscriptions.values())
    rules: list[Rule] = []
    kept: list[Kept] = []
    for sub in subs:
        for status in STATUSES:
            days = older_than_days or retention_days(sub, status)
            if status == "open" and not include_open:
                kept.append(Kept(sub.name, status, "are kept unless --include-open is given"))
            elif not days:
                why = f"are kept forever (failure_retention_days_{status} = 0)"
                kept.append(Kept(sub.name, status, why))
            else:
                rules.append(Rule(sub.name, status, days, now - timedelta(days=days)))
    declared = frozenset() if names else frozenset(cfg.subscriptions)
    return Plan(now, tuple(rules), tuple(kept), older_than_days, include_open, declared)


# -- the survey and the purge -------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One entry named in a report: its id, status and the moment its age runs from."""

    message_id: str
    status: Status
    at: datetime


@dataclass
class Selection:
    """What one rule selects: how many entries, and the oldest of them."""

    rule: Rule
    count: int = 0
    oldest: Entry | None = None
    deleted: int | None = None  # None until a real run deleted them


@dataclass
class SubscriptionPurge:
    """A subscription's part of a purge: selected (and deleted) entries per status."""

    subscription: str
    selected: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] | None = None
    oldest: Entry | None = None
    kept: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.selected.values())


@dataclass
class PurgeReport:
    dry_run: bool
    plan: Plan
    subscriptions: list[SubscriptionPurge]
    #: Entries of subscriptions the config does not declare: never purged.
    undeclared: dict[str, int] = field(default_factory=dict)

    @property
    def selected(self) -> int:
        return sum(s.total for s in self.subscriptions)

    @property
    def deleted(self) -> int:
        return sum(sum((s.deleted or {}).values()) for s in self.subscriptions)


def survey_sql(dialect: Dialect, rule: Rule) -> tuple[str, str, list[Any]]:
    """(count statement, oldest-entry statement, their parameters) for one rule."""
    q = dialect.quote
    cond, params = rule.condition(dialect)
    age = _age(dialect, rule.status)
    table = q(FAILURES.name)
    count = f"SELECT COUNT(*) FROM {table} WHERE {cond}"
    oldest = dialect.limit(
        f"SELECT {q('message_id')}, {age} FROM {table} WHERE {cond} "
        f"ORDER BY {age}, {q('message_id')}",
        1,
    )
    return count, oldest, params


def delete_sql(dialect: Dialect, rule: Rule, n: int = BATCH) -> tuple[str, list[Any]]:
    """One DELETE of at most ``n`` of the rule's entries."""
    cond, params = rule.condition(dialect)
    return dialect.delete_some(FAILURES.name, FAILURES.primary_key, cond, params, n)


def _survey(store: SqlStore, rule: Rule) -> Selection:
    d = store.dialect
    count_sql, oldest_sql, params = survey_sql(d, rule)
    with store.transaction() as cur:
        cur.execute(count_sql, params)
        count = int(cur.fetchone()[0])
        cur.execute(oldest_sql, params)
        found = cur.fetchone()
    oldest = None
    if found is not None:
        oldest = Entry(str(found[0]), rule.status, d.from_db("datetime", found[1]))
    return Selection(rule, count, oldest)


def _delete(store: SqlStore, rule: Rule, batch: int) -> int:
    """Delete the rule's entries, ``batch`` per transaction; how many went."""
    deleted = 0
    while True:
        with store.transaction() as cur:
            cur.execute(*delete_sql(store.dialect, rule, batch))
            n = int(cur.rowcount or 0)
        deleted += n
        if n < batch:
            return deleted


def purge(
    store: SqlStore,
    the_plan: Plan,
    *,
    dry_run: bool = False,
    batch: int = BATCH,
    actor: str | None = None,
) -> PurgeReport:
    """Survey the plan's entries and, unless ``dry_run``, delete them.

    The report counts the selection per subscription and status with its oldest entry
    (the same survey in both modes) and, for a real run, what was deleted. A real run
    writes one audit entry per subscription it deleted from.
    """
    selections = [_survey(store, rule) for rule in the_plan.rules]
    if not dry_run:
        for sel in selections:
            sel.deleted = _delete(store, sel.rule, batch) if sel.count else 0
    report = PurgeReport(dry_run, the_plan, _by_subscription(the_plan, selections, dry_run))
    if the_plan.declared:
        report.undeclared = {
            name: size.entries
            for name, size in log_sizes(store).items()
            if name not in the_plan.declared
        }
    if not dry_run:
        _audit(store, report, actor)
    return report


def _by_subscription(
    the_plan: Plan, selections: Iterable[Selection], dry_run: bool
) -> list[SubscriptionPurge]:
    parts = {name: SubscriptionPurge(name) for name in the_plan.subscriptions}
    for sel in selections:
        part = parts[sel.rule.subscription]
        part.selected[sel.rule.status] = sel.count
        if not dry_run:
            part.deleted = part.deleted or {}
            part.deleted[sel.rule.status] = sel.deleted or 0
        if sel.oldest and (part.oldest is None or sel.oldest.at < part.oldest.at):
            part.oldest = sel.oldest
    for k in the_plan.kept:
        parts[k.subscription].kept.append(f"{k.status} entries {k.why}")
    return list(parts.values())


def _audit(store: SqlStore, report: PurgeReport, actor: str | None) -> None:
    for part in report.subscriptions:
        if not part.deleted or not sum(part.deleted.values()):
            continue
        details: dict[str, Any] = {
            "deleted": part.deleted,
            "older_than_days": report.plan.older_than_days,
            "include_open": report.plan.include_open,
            "cutoffs": {
                r.status: r.before.isoformat()
                for r in report.plan.rules
                if r.subscription == part.subscription
            },
        }
        audit.write(store, "purge failures", part.subscription, details, actor)


# -- the log's size -------------------------------------------------------------------------
@dataclass
class LogSize:
    """A subscription's failure log: entries per status, and when the oldest was first seen."""

    subscription: str
    by_status: dict[str, int] = field(default_factory=dict)
    oldest_at: datetime | None = None

    @property
    def entries(self) -> int:
        return sum(self.by_status.values())

    @property
    def open(self) -> int:
        return self.by_status.get("open", 0)

    @property
    def replayed(self) -> int:
        return self.by_status.get("replayed", 0)


def log_sizes_sql(dialect: Dialect) -> str:
    q = dialect.quote
    return (
        f"SELECT {q('subscription')}, {q('status')}, COUNT(*), MIN({q('first_seen')}) "
        f"FROM {q(FAILURES.name)} GROUP BY {q('subscription')}, {q('status')}"
    )


def log_sizes(store: SqlStore) -> dict[str, LogSize]:
    """Every subscription that has entries in the failure log, declared or not."""
    d = store.dialect
    with store.transaction() as cur:
        cur.execute(log_sizes_sql(d))
        rows = cur.fetchall()
    sizes: dict[str, LogSize] = {}
    for name, status, count, first in rows:
        size = sizes.setdefault(str(name), LogSize(str(name)))
        size.by_status[str(status)] = int(count)
        at = d.from_db("datetime", first)
        if at is not None and (size.oldest_at is None or at < size.oldest_at):
            size.oldest_at = at
    return sizes
