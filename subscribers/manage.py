"""Subscriptions on the server vs. their declarations: list, add, sync, drop.

The config file declares each subscription; these functions compare that with what
the Pub/Sub admin API reports and change the server to match, writing every change to
the audit log. They work against any conformant server. Where a server does not keep
a setting (the local cloudbox server drops dead-letter and retry policies and filters),
the drift stays visible after ``sync``, which says the server did not keep it: the
tool never pretends a setting is in force when the server says otherwise.

The legacy-drop guard: a ``rethinkdb``-sink subscription keeps the old store current;
dropping it while any client still reads the old store would freeze that client's
data, so it is refused unless forced. Who still reads the old store is asked through
:data:`old_store_readers`, a seam the flags area fills (see :func:`default_old_store_readers`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyodbc
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1
from google.protobuf import duration_pb2

from core import pubsub
from core.config import ConfigError, Entity, Subscription
from core.redaction import redact
from core.settings import Settings
from stores.runtime import Runtime
from stores.sql import StoreUnavailable

from . import audit, counters
from .counters import Counts

#: Seconds an admin call may take (the client's default retries for a minute or more
#: against an unreachable server).
ADMIN_TIMEOUT_S = 30.0

#: Settings the server cannot change on an existing subscription: drift here needs a
#: drop and an add (which loses the backlog), so ``sync`` only reports it.
IMMUTABLE = ("topic", "message_ordering", "filter")


class DropRefused(ConfigError):
    """A drop the legacy guard refused; the message names the clients still reading."""


@dataclass(frozen=True)
class Drift:
    field: str
    declared: Any
    actual: Any

    @property
    def mutable(self) -> bool:
        return self.field not in IMMUTABLE

    def __str__(self) -> str:
        return f"{self.field}: declared {self.declared!r}, server {self.actual!r}"


@dataclass
class SubscriptionStatus:
    """One line of ``cutover subs list``."""

    name: str
    declared: bool
    exists: bool
    topic: str
    sink: str | None
    drift: list[Drift] = field(default_factory=list)
    counts: Counts | None = None
    backlog: int | None = None


# -- declared vs. actual ----------------------------------------------------------------
def _short(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def declared_subscription(settings: Settings, sub: Subscription) -> pubsub_v1.types.Subscription:
    """The server-side subscription a declaration asks for."""
    t = pubsub_v1.types
    request = t.Subscription(
        name=pubsub.subscription_path(settings, sub.name),
        topic=pubsub.topic_path(settings, sub.topic),
        ack_deadline_seconds=sub.ack_deadline_s,
        enable_message_ordering=sub.message_ordering,
        filter=sub.filter,
        retry_policy=t.RetryPolicy(
            minimum_backoff=duration_pb2.Duration(seconds=sub.retry_min_backoff_s),
            maximum_backoff=duration_pb2.Duration(seconds=sub.retry_max_backoff_s),
        ),
    )
    if sub.dead_letter_topic:
        request.dead_letter_policy = t.DeadLetterPolicy(
            dead_letter_topic=pubsub.topic_path(settings, sub.dead_letter_topic),
            max_delivery_attempts=sub.max_delivery_attempts,
        )
    return request


def _view(sub: pubsub_v1.types.Subscription) -> dict[str, Any]:
    """The settings cutover manages, in the config file's terms."""
    has_retry = "retry_policy" in sub
    has_dlq = "dead_letter_policy" in sub and bool(sub.dead_letter_policy.dead_letter_topic)
    return {
        "topic": _short(sub.topic),
        "ack_deadline_s": sub.ack_deadline_seconds,
        "message_ordering": bool(sub.enable_message_ordering),
        "filter": sub.filter,
        "dead_letter_topic": _short(sub.dead_letter_policy.dead_letter_topic) if has_dlq else None,
        "max_delivery_attempts": sub.dead_letter_policy.max_delivery_attempts if has_dlq else None,
        "retry_min_backoff_s": (
            int(sub.retry_policy.minimum_backoff.total_seconds()) if has_retry else None
        ),
        "retry_max_backoff_s": (
            int(sub.retry_policy.maximum_backoff.total_seconds()) if has_retry else None
        ),
    }


def drift(
    settings: Settings, sub: Subscription, actual: pubsub_v1.types.Subscription
) -> list[Drift]:
    """Every managed setting whose server value differs from the declaration."""
    want, have = _view(declared_subscription(settings, sub)), _view(actual)
    return [Drift(k, want[k], have[k]) for k in want if want[k] != have[k]]


def _existing(settings: Settings, client: pubsub_v1.SubscriberClient) -> dict[str, Any]:
    project = f"projects/{settings.pubsub_project}"
    found = client.list_subscriptions(request={"project": project}, timeout=ADMIN_TIMEOUT_S)
    return {_short(s.name): s for s in found}


def _get(settings: Settings, client: pubsub_v1.SubscriberClient, name: str) -> Any:
    try:
        return client.get_subscription(
            request={"subscription": pubsub.subscription_path(settings, name)},
            timeout=ADMIN_TIMEOUT_S,
        )
    except gexc.NotFound:
        return None


def backlog(settings: Settings, name: str) -> int | None:
    """Undelivered messages, where the server reports them; None otherwise.

    The Pub/Sub API itself has no backlog call: Google reports it through Cloud
    Monitoring (``subscription/num_undelivered_messages``), used when its client library
    is installed and cutover talks to Google Cloud. Local servers report nothing.
    Not exercised by the test suite (no Cloud Monitoring here).
    """
    if settings.pubsub_emulator_host:
        return None
    try:
        import time

        from google.cloud import monitoring_v3

        client = monitoring_v3.MetricServiceClient()
        now = int(time.time())
        series = client.list_time_series(
            request={
                "name": f"projects/{settings.pubsub_project}",
                "filter": (
                    'metric.type = "pubsub.googleapis.com/subscription/num_undelivered_messages" '
                    f'AND resource.labels.subscription_id = "{name}"'
                ),
                "interval": {"end_time": {"seconds": now}, "start_time": {"seconds": now - 600}},
            }
        )
        for item in series:
            return int(item.points[0].value.int64_value)
    except Exception:  # best effort: no library, no permission, no data
        return None
    return None


def read_counts(runtime: Runtime) -> tuple[dict[str, Counts], str | None]:
    """The persistent counters, or none and why when the SQL store cannot be read.

    Listing must still work when the SQL store is down: the server side is what an
    engineer needs most then.
    """
    try:
        runtime.sql.ensure_schema(_tables())  # a fresh database: the tables are empty
        return counters.read_all(runtime.sql), None
    except (StoreUnavailable, pyodbc.Error) as exc:
        return {}, redact(str(exc))


def status(runtime: Runtime, counts: dict[str, Counts] | None = None) -> list[SubscriptionStatus]:
    """Declared and existing subscriptions side by side (declared ones first).

    ``counts`` defaults to :func:`read_counts` (failing quietly to none).
    """
    settings, cfg = runtime.settings, runtime.cfg
    client = pubsub.subscriber(settings)
    try:
        existing = _existing(settings, client)
    finally:
        client.close()
    if counts is None:
        counts = read_counts(runtime)[0]
    rows: list[SubscriptionStatus] = []
    declared = dict(cfg.subscriptions)
    if cfg.jobs is not None:  # the per-client jobs' subscription, declared in [jobs]
        declared.setdefault(cfg.jobs.subscription, cfg.jobs.as_subscription())
    for name, sub in declared.items():
        actual = existing.get(name)
        rows.append(
            SubscriptionStatus(
                name,
                True,
                actual is not None,
                sub.topic,
                sub.sink if name in cfg.subscriptions else "jobs",
                drift(settings, sub, actual) if actual is not None else [],
                counts.get(name),
                backlog(settings, name) if actual is not None else None,
            )
        )
    for name, actual in sorted(existing.items()):
        if name not in declared:
            rows.append(
                SubscriptionStatus(
                    name,
                    False,
                    True,
                    _short(actual.topic),
                    None,
                    [],
                    counts.get(name),
                    backlog(settings, name),
                )
            )
    return rows


# -- changes ----------------------------------------------------------------------------
@dataclass
class Change:
    """What an add/sync/drop did (or would do, in a dry run)."""

    subscription: str
    action: str
    done: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)


def add(
    runtime: Runtime,
    name: str,
    *,
    actor: str | None = None,
    dry_run: bool = False,
    declared: Subscription | None = None,
) -> Change:
    """Create the topic (and dead-letter topic) if missing, then the subscription.

    ``declared`` is the declaration when it is not a ``[subscriptions.*]`` entry (the
    per-client jobs' subscription, from ``[jobs]``).
    """
    settings, sub = runtime.settings, declared or runtime.cfg.subscription(name)
    change = Change(name, "add")
    client = pubsub.subscriber(settings)
    try:
        actual = _get(settings, client, name)
        if actual is not None:
            change.left = [str(d) for d in drift(settings, sub, actual)]
            hint = "; run `cutover subs sync`" if change.left else ""
            change.done.append(f"already exists{hint}")
            return change
        topics = [sub.topic, *([sub.dead_letter_topic] if sub.dead_letter_topic else [])]
        if dry_run:
            change.done = [f"would create topic {t} if missing" for t in topics]
            change.done.append(f"would create subscription {name} on {sub.topic}")
            return change
        runtime.sql.ensure_schema(_tables())  # the audit log must be writable first
        publisher = pubsub.publisher(settings)
        for topic in topics:
            if pubsub.ensure_topic(settings, topic, publisher):
                change.done.append(f"created topic {topic}")
        request = declared_subscription(settings, sub)
        try:
            created = client.create_subscription(request=request, timeout=ADMIN_TIMEOUT_S)
        except gexc.AlreadyExists:  # created by someone else since we looked
            created = _get(settings, client, name)
            change.done.append("already exists (created concurrently)")
        else:
            change.done.append(f"created subscription {name} on topic {sub.topic}")
        if created is not None:
            change.left = [
                f"{d} (the server did not keep it)" for d in drift(settings, sub, created)
            ]
    finally:
        client.close()
    audit.write(
        runtime.sql,
        "add",
        name,
        {"done": change.done, "left": change.left, "declared": _view(request)},
        actor,
    )
    return change


def sync(
    runtime: Runtime,
    names: Iterable[str] | None = None,
    *,
    actor: str | None = None,
    dry_run: bool = False,
) -> list[Change]:
    """Bring existing subscriptions to their declared settings.

    Mutable settings (ack deadline, dead-letter and retry policies) are updated in
    place; immutable ones (topic, ordering, filter) are reported for a drop and add.
    Missing subscriptions are reported, not created (that is ``add``).
    """
    settings, cfg = runtime.settings, runtime.cfg
    chosen = [cfg.subscription(n) for n in (names or cfg.subscriptions)]
    changes: list[Change] = []
    client = pubsub.subscriber(settings)
    try:
        if not dry_run:
            runtime.sql.ensure_schema(_tables())
        for sub in chosen:
            changes.append(_sync_one(runtime, client, sub, actor=actor, dry_run=dry_run))
    finally:
        client.close()
    return changes


_UPDATE_PATHS = {
    "ack_deadline_s": "ack_deadline_seconds",
    "dead_letter_topic": "dead_letter_policy",
    "max_delivery_attempts": "dead_letter_policy",
    "retry_min_backoff_s": "retry_policy",
    "retry_max_backoff_s": "retry_policy",
}


def _sync_one(
    runtime: Runtime, client: Any, sub: Subscription, *, actor: str | None, dry_run: bool
) -> Change:
    settings = runtime.settings
    change = Change(sub.name, "sync")
    actual = _get(settings, client, sub.name)
    if actual is None:
        change.left.append(f"missing on the server: run `cutover subs add {sub.name}`")
        return change
    before = drift(settings, sub, actual)
    if not before:
        return change
    fixable = [d for d in before if d.mutable]
    change.left = [f"{d} (immutable: drop and add to change it)" for d in before if not d.mutable]
    if dry_run:
        change.done = [
            f"would set {d.field} to {d.declared!r} (server {d.actual!r})" for d in fixable
        ]
        return change
    if fixable:
        if sub.dead_letter_topic:
            pubsub.ensure_topic(settings, sub.dead_letter_topic)
        paths = sorted({_UPDATE_PATHS[d.field] for d in fixable})
        client.update_subscription(
            request={
                "subscription": declared_subscription(settings, sub),
                "update_mask": {"paths": paths},
            },
            timeout=ADMIN_TIMEOUT_S,
        )
        after = {d.field: d for d in drift(settings, sub, _get(settings, client, sub.name))}
        for d in fixable:
            if d.field in after:
                change.left.append(f"{after[d.field]} (the server did not keep it)")
            else:
                change.done.append(f"set {d.field} to {d.declared!r} (was {d.actual!r})")
    audit.write(
        runtime.sql,
        "sync",
        sub.name,
        {
            "drift_before": [str(d) for d in before],
            "done": change.done,
            "left": change.left,
        },
        actor,
    )
    return change


ReadersHook = Callable[[Runtime, Entity], list[str]]


def known_clients(runtime: Runtime, entity: Entity) -> list[str]:
    """Every client either store holds for the entity (the guard's safe fallback).

    A store that cannot be read counts as "unknown clients", which keeps the guard shut.
    """
    clients: set[str] = set()
    readable = 0
    for read in (
        lambda: runtime.sql.clients(entity),
        lambda: list(runtime.rethink.count_per_client(entity)),
    ):
        try:
            clients.update(read())
            readable += 1
        except Exception:  # an unreadable store must not open the guard
            clients.add("<unknown: a store could not be read>")
    return sorted(clients) if readable else ["<unknown: no store could be read>"]


def default_old_store_readers(runtime: Runtime, entity: Entity) -> list[str]:
    """Clients still reading ``entity`` from the old store.

    Asks the flags area (``flags.state.clients_reading_old_store``) when it is
    installed; without it, every known client is assumed to read the old store, so the
    legacy subscription can only be dropped with ``--force``.
    """
    try:
        from flags.state import clients_reading_old_store
    except ImportError:
        return known_clients(runtime, entity)
    try:
        return list(clients_reading_old_store(runtime, entity.name))
    except Exception:  # flags or a store unreadable: keep the guard shut
        return known_clients(runtime, entity)


#: The seam the legacy-drop guard asks; replace it (or pass ``readers=``) to change the
#: source of truth.
old_store_readers: ReadersHook = default_old_store_readers


def drop(
    runtime: Runtime,
    name: str,
    *,
    force: bool = False,
    actor: str | None = None,
    readers: ReadersHook | None = None,
) -> Change:
    """Delete a subscription (its backlog is lost); the legacy guard may refuse.

    Needs the SQL store (the audit log): with it down nothing is deleted.

    Raises :class:`DropRefused` for a ``rethinkdb``-sink subscription while any client
    still reads the old store, unless ``force``; the refusal is audited too.
    """
    settings, cfg = runtime.settings, runtime.cfg
    sub = cfg.subscriptions.get(name)
    change = Change(name, "drop")
    details: dict[str, Any] = {"force": force, "declared": sub is not None}
    runtime.sql.ensure_schema(_tables())
    if sub is not None and sub.sink == "rethinkdb":
        entity = cfg.entity(sub.entity)
        still = (readers or old_store_readers)(runtime, entity)
        details["old_store_readers"] = still
        if still and not force:
            audit.write(runtime.sql, "drop-refused", name, details, actor)
            more = f" and {len(still) - 10} more" if len(still) > 10 else ""
            shown = ", ".join(still[:10]) + more
            raise DropRefused(
                f"refusing to drop {name!r}: it keeps the old store in sync and "
                f"{len(still)} client(s) still read {entity.name} from it ({shown}); "
                f"move them to the new store first (`cutover rollout run {entity.name}`; "
                f"held-back clients: `cutover flags except {entity.name} CLIENT --release`), "
                "or pass --force"
            )
    client = pubsub.subscriber(settings)
    try:
        client.delete_subscription(
            request={"subscription": pubsub.subscription_path(settings, name)},
            timeout=ADMIN_TIMEOUT_S,
        )
        change.done.append(f"deleted subscription {name}")
    except gexc.NotFound:
        if sub is None:
            raise ConfigError(
                f"subscription {name!r} is neither declared nor on the server"
            ) from None
        change.done.append("not on the server (nothing to delete)")
    finally:
        client.close()
    details["done"] = change.done
    audit.write(runtime.sql, "drop", name, details, actor)
    return change


def _tables() -> list[Any]:
    from cutover.tables import all_tables

    return all_tables()
