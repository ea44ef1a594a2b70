"""``cutover subs``: manage the double-write subscriptions and run their handlers."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from core.redaction import redact
from stores.runtime import Runtime

_ACTOR = click.option("--actor", help="Who to record in the audit log (default: the OS user).")


def _print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal; tab-separated lines (never wrapped) for pipes and logs."""
    if sys.stdout.isatty():
        table = Table(*headers)
        for row in rows:
            table.add_row(*row)
        Console(highlight=False).print(table)
        return
    click.echo("\t".join(headers))
    for row in rows:
        click.echo("\t".join(cell.replace("\n", "; ") for cell in row))


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z") if value else "-"


class _SubsGroup(click.Group):
    """Pub/Sub API failures (server unreachable, permission denied) end like the root's
    known errors: one ``error:`` line and exit code 2, no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from google.api_core import exceptions as gexc

        try:
            return super().invoke(ctx)
        except (gexc.GoogleAPIError, gexc.RetryError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            click.secho(f"error: Pub/Sub: {redact(message)}", fg="red", err=True)
            sys.exit(2)


@click.group(cls=_SubsGroup)
def subs() -> None:
    """Pub/Sub subscriptions that double-write every event, and their handler workers.

    \b
    Each subscription is declared in cutover.toml ([subscriptions.NAME]: topic, entity,
    sink = "sqlstore" for the new store or "rethinkdb" for the legacy writer, ack
    deadline, ordering, dead-letter, retry backoff, filter, flow control, batch size
    and latency). Typical use:
      cutover subs add orders-sqlstore     create topic + subscription as declared
      cutover subs run orders-sqlstore     the worker (scale out: run it many times)
      cutover subs list                    state, drift, counters per subscription
      cutover subs failures list           poison messages, then `failures replay`
      cutover subs failures purge --dry-run  entries past their retention
      cutover subs drop orders-rethinkdb   clean-up once no client reads the old store
    """


# -- list -------------------------------------------------------------------------------
@subs.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_cmd(as_json: bool) -> None:
    """Declared and existing subscriptions side by side.

    Shows whether each exists on the server, drift between the declaration and the
    server's settings, the sink, processed/failed counts and last event time (added up
    over every worker, from the SQL store), the backlog where the server reports it,
    and the failure log's size (open and replayed entries) and oldest entry. A
    subscription on the server that the config does not declare is listed as
    "undeclared".
    """
    from .manage import read_counts, status
    from .retention import log_sizes

    rt = Runtime()
    counts, problem = read_counts(rt)
    if problem:
        click.secho(f"warning: counters unavailable (SQL store: {problem})", fg="yellow", err=True)
    sizes = {} if problem else log_sizes(rt.sql)
    rows = status(rt, counts)
    if as_json:
        out = [
            {
                "name": r.name,
                "declared": r.declared,
                "exists": r.exists,
                "topic": r.topic,
                "sink": r.sink,
                "drift": [str(d) for d in r.drift],
                "processed": r.counts.processed if r.counts else 0,
                "applied": r.counts.applied if r.counts else 0,
                "stale": r.counts.stale if r.counts else 0,
                "failed": r.counts.failed if r.counts else 0,
                "last_event_at": _when(r.counts.last_event_at) if r.counts else None,
                "backlog": r.backlog,
                "failure_log": _size_dict(sizes.get(r.name)),
            }
            for r in rows
        ]
        click.echo(json.dumps(out, indent=2))
        return
    lines = []
    for r in rows:
        exists = ("yes" if r.exists else "NO") + ("" if r.declared else " (undeclared)")
        drift = "\n".join(str(d) for d in r.drift) or "-"
        c = r.counts
        lines.append(
            [
                r.name,
                exists,
                drift,
                r.sink or "?",
                str(c.processed) if c else "0",
                str(c.failed) if c else "0",
                _when(c.last_event_at) if c else "-",
                "-" if r.backlog is None else str(r.backlog),
                *_size_cells(sizes.get(r.name)),
            ]
        )
    _print_table(
        [
            "subscription",
            "exists",
            "drift",
            "sink",
            "processed",
            "failed",
            "last event",
            "backlog",
            "failure log",
            "oldest entry",
        ],
        lines,
    )


def _size_dict(size: Any) -> dict[str, Any]:
    """A subscription's failure log for JSON (zeros when it has no entry)."""
    return {
        "entries": size.entries if size else 0,
        "open": size.open if size else 0,
        "replayed": size.replayed if size else 0,
        "oldest_at": _when(size.oldest_at) if size and size.oldest_at else None,
    }


def _size_cells(size: Any) -> list[str]:
    if size is None or not size.entries:
        return ["0", "-"]
    return [f"{size.entries} ({size.open} open, {size.replayed} replayed)", _when(size.oldest_at)]


def _print_change(change: Any) -> None:
    for line in change.done:
        click.echo(f"{change.subscription}: {line}")
    for line in change.left:
        click.secho(f"{change.subscription}: still differs: {line}", fg="yellow")


# -- add / sync / drop ------------------------------------------------------------------
@subs.command("add")
@click.argument("name")
@_ACTOR
@click.option("--dry-run", is_flag=True, help="Say what would be created; change nothing.")
def add_cmd(name: str, actor: str | None, dry_run: bool) -> None:
    """Create NAME's topic (and dead-letter topic) if missing and the subscription.

    Uses the declared settings; an existing subscription is left alone (see `sync`).
    Written to the audit log.
    """
    from .manage import add

    _print_change(add(Runtime(), name, actor=actor, dry_run=dry_run))


@subs.command("sync")
@click.argument("names", nargs=-1)
@_ACTOR
@click.option("--dry-run", is_flag=True, help="Show the drift that would be fixed.")
def sync_cmd(names: tuple[str, ...], actor: str | None, dry_run: bool) -> None:
    """Bring existing subscriptions (all declared ones by default) to their declared settings.

    Ack deadline, dead-letter and retry policies are updated in place. Topic, message
    ordering and filter cannot change on a live subscription: they are reported (drop
    and add to change them, which loses the backlog). Written to the audit log.
    """
    from .manage import sync

    changes = sync(Runtime(), names or None, actor=actor, dry_run=dry_run)
    for change in changes:
        if not change.done and not change.left:
            click.echo(f"{change.subscription}: in sync")
        _print_change(change)


@subs.command("drop")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (scripts).")
@click.option(
    "--force",
    is_flag=True,
    help="Drop a legacy (rethinkdb) subscription even while clients read the old store.",
)
@_ACTOR
def drop_cmd(name: str, yes: bool, force: bool, actor: str | None) -> None:
    """Delete subscription NAME on the server; its undelivered messages are lost.

    Dropping a sink="rethinkdb" subscription (the legacy writer keeping the old store
    current) is refused while any client still reads that entity from the old store,
    unless --force. Refusals and drops are written to the audit log.
    """
    from .manage import drop

    rt = Runtime()
    if not yes:
        click.confirm(f"Delete subscription {name!r} (its backlog is lost)?", abort=True)
    _print_change(drop(rt, name, force=force, actor=actor))


@subs.command("audit")
@click.argument("name", required=False)
@click.option("--limit", default=50, show_default=True)
def audit_cmd(name: str | None, limit: int) -> None:
    """Show the audit log (newest first): add, sync, drop, refused drops, replays."""
    from .audit import read

    rows = [
        [
            _when(e.at),
            e.actor,
            e.action,
            e.subscription,
            json.dumps(e.details, ensure_ascii=False)[:300],
        ]
        for e in read(Runtime().sql, name, limit)
    ]
    _print_table(["when", "actor", "action", "subscription", "details"], rows)


# -- run --------------------------------------------------------------------------------
@subs.command("run")
@click.argument("names", nargs=-1, required=True)
@click.option(
    "--metrics-port",
    type=int,
    help="Serve Prometheus metrics on this port (API host from settings).",
)
@click.option(
    "--log-every", default=10.0, show_default=True, help="Seconds between progress lines."
)
def run_cmd(names: tuple[str, ...], metrics_port: int | None, log_every: float) -> None:
    """Run the handler for one or more subscriptions until SIGTERM/SIGINT.

    Streaming pull with the declared flow control; messages are applied in batches
    (batch_size or max_batch_latency_ms, whichever comes first), one transaction per
    batch through the store's version-guarded write, and acked only after the commit.
    A store outage nacks batches (redelivered) and the worker retries with backoff until
    the store returns. Poison messages go to the failure log (`cutover subs failures`).
    SIGTERM/SIGINT: stop pulling, commit and ack the batch in hand, exit 0. Start as many
    workers per subscription as you need, on any machines. Settings come from CUTOVER_*.
    """
    from .worker import Worker

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    rt = Runtime()
    for name in names:
        rt.cfg.subscription(name)  # unknown name: fail before connecting to anything
    worker = Worker(rt, names, log_every_s=log_every)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=rt.settings.api_host, registry=worker.metrics.registry)
    code = worker.run()
    if worker.error:
        click.secho(f"error: {redact(worker.error)}", fg="red", err=True)
    rt.close()
    sys.exit(code)


# -- failures ---------------------------------------------------------------------------
@subs.group("failures")
def failures_group() -> None:
    """Poison messages the handlers logged and acked: inspect, replay and purge them."""


@failures_group.command("list")
@click.option("--subscription", help="Only this subscription.")
@click.option(
    "--status", type=click.Choice(["open", "replayed", "all"]), default="open", show_default=True
)
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def failures_list(subscription: str | None, status: str, limit: int, as_json: bool) -> None:
    """Failure-log entries, newest first."""
    from .failures import list_failures

    found = list_failures(
        Runtime().sql,
        subscription=subscription,
        status=None if status == "all" else status,  # type: ignore[arg-type]
        limit=limit,
    )
    if as_json:
        click.echo(json.dumps([_failure_dict(f) for f in found], indent=2, ensure_ascii=False))
        return
    if not found:
        click.echo("no failures")
        return
    rows = [
        [f.subscription, f.message_id, str(f.attempts), _when(f.last_seen), f.status, f.error[:200]]
        for f in found
    ]
    _print_table(["subscription", "message id", "attempts", "last seen", "status", "error"], rows)


def _failure_dict(f: Any) -> dict[str, Any]:
    return {
        "subscription": f.subscription,
        "message_id": f.message_id,
        "entity": f.entity,
        "data": f.text,
        "attributes": f.attributes,
        "ordering_key": f.ordering_key,
        "error": f.error,
        "attempts": f.attempts,
        "first_seen": _when(f.first_seen),
        "last_seen": _when(f.last_seen),
        "status": f.status,
        "resolved_at": _when(f.resolved_at),
        "resolution": f.resolution,
    }


@failures_group.command("show")
@click.argument("message_id")
@click.option("--subscription", help="Needed when the id failed on several subscriptions.")
def failures_show(message_id: str, subscription: str | None) -> None:
    """One failure in full: raw body, attributes, error, attempts, first and last seen."""
    from .failures import get

    f = get(Runtime().sql, message_id, subscription)
    for key, value in _failure_dict(f).items():
        if key != "data":
            click.echo(f"{key:13} {value}")
    click.echo("data:")
    click.echo(f.text)


@failures_group.command("replay")
@click.argument("message_ids", nargs=-1)
@click.option("--subscription", help="Replay this subscription's open failures (with --all).")
@click.option("--all", "replay_all", is_flag=True, help="Every open failure (of --subscription).")
@click.option(
    "--data",
    "data_file",
    type=click.Path(exists=True, dir_okay=False),
    help="A corrected message body (JSON) to apply instead of the stored one (one id only).",
)
@click.option("--dry-run", is_flag=True, help="Judge the messages again; write nothing.")
@_ACTOR
def failures_replay(
    message_ids: tuple[str, ...],
    subscription: str | None,
    replay_all: bool,
    data_file: str | None,
    dry_run: bool,
    actor: str | None,
) -> None:
    """Re-apply failed messages after the cause is fixed.

    Without --data the stored body is judged again under the current config (fixed
    config, widened column); with --data a corrected body is applied. The write goes
    through the same version-guarded path as the stream: if a newer version is already
    stored, the replay is "stale" and changes nothing. A message that still fails stays
    open with one more attempt. Every replay is written to the audit log.
    """
    from .failures import get, list_failures, load_body, replay

    if bool(message_ids) == replay_all:
        raise click.UsageError("give message ids or --all")
    if data_file and len(message_ids) != 1:
        raise click.UsageError("--data needs exactly one message id")
    rt = Runtime()
    targets = (
        list_failures(rt.sql, subscription=subscription, status="open", limit=1_000_000)
        if replay_all
        else [get(rt.sql, m, subscription) for m in message_ids]
    )
    data = load_body(data_file) if data_file else None
    tally: dict[str, int] = {}
    for done, failure in enumerate(_progress(targets), 1):
        outcome = replay(rt, failure, data=data, actor=actor, dry_run=dry_run)
        tally[outcome.result] = tally.get(outcome.result, 0) + 1
        if len(targets) <= 20 or outcome.result == "failed":
            click.echo(
                f"{outcome.subscription} {outcome.message_id}: {outcome.result}"
                + (f": {outcome.detail}" if outcome.detail else "")
            )
        elif not sys.stdout.isatty() and done % 500 == 0:
            click.echo(f"replayed {done}/{len(targets)}")
    summary = ", ".join(f"{n} {k}" for k, n in sorted(tally.items())) or "nothing to replay"
    click.echo(("dry run: " if dry_run else "") + summary)


@failures_group.command("purge")
@click.argument("name", required=False)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option(
    "--include-open",
    is_flag=True,
    help="Also purge OPEN entries past their retention (never purged without this flag).",
)
@click.option(
    "--older-than",
    type=click.IntRange(min=1),
    metavar="DAYS",
    help="Purge entries older than DAYS instead of the declared retention.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_ACTOR
def failures_purge(
    name: str | None,
    dry_run: bool,
    include_open: bool,
    older_than: int | None,
    as_json: bool,
    actor: str | None,
) -> None:
    """Delete failure-log entries past their retention (NAME, or every declared one).

    \b
    Retention per subscription in cutover.toml (0 keeps forever):
      failure_retention_days_replayed = 30   days after its replay
      failure_retention_days_open = 0        days after it last failed

    Open entries are purged only with --include-open. --dry-run selects exactly what
    the real run deletes (counts per subscription and the oldest entry) and deletes
    nothing; a real run deletes in short transactions and is written to the audit log.
    Entries of subscriptions the config does not declare are counted and kept.
    """
    from core.clock import now_utc

    from .retention import plan, purge
    from .tables import TABLES

    rt = Runtime()
    rt.sql.ensure_schema(TABLES)  # a fresh database: nothing to purge, not an error
    the_plan = plan(
        rt.cfg,
        [name] if name else None,
        now=now_utc(),
        include_open=include_open,
        older_than_days=older_than,
    )
    report = purge(rt.sql, the_plan, dry_run=dry_run, actor=actor)
    if as_json:
        click.echo(json.dumps(_purge_dict(report), indent=2, ensure_ascii=False))
        return
    rows = []
    for part in report.subscriptions:
        oldest = part.oldest
        rows.append(
            [
                part.subscription,
                str(part.selected.get("replayed", "-")),
                str(part.selected.get("open", "-")),
                f"{_when(oldest.at)} {oldest.status} {oldest.message_id}" if oldest else "-",
                "-" if part.deleted is None else str(sum(part.deleted.values())),
            ]
        )
    _print_table(["subscription", "replayed", "open", "oldest selected", "deleted"], rows)
    notes: dict[str, list[str]] = {}
    for part in report.subscriptions:
        for note in part.kept:
            notes.setdefault(note, []).append(part.subscription)
    for note, names in notes.items():
        every = len(names) == len(report.subscriptions) > 1
        click.echo(f"{'every subscription' if every else ', '.join(names)}: {note}")
    for other, n in sorted(report.undeclared.items()):
        click.echo(f"{other}: {n} entries kept (not declared in the config)")
    if dry_run:
        click.echo(f"dry run: {report.selected} entries would be deleted; nothing deleted")
    else:
        click.echo(f"deleted {report.deleted} entries")


def _purge_dict(report: Any) -> dict[str, Any]:
    return {
        "dry_run": report.dry_run,
        "now": _when(report.plan.now),
        "selected": report.selected,
        "deleted": None if report.dry_run else report.deleted,
        "subscriptions": [
            {
                "subscription": p.subscription,
                "selected": p.selected,
                "deleted": p.deleted,
                "oldest": _entry_dict(p.oldest),
                "kept": p.kept,
            }
            for p in report.subscriptions
        ],
        "undeclared": report.undeclared,
    }


def _entry_dict(entry: Any) -> dict[str, Any] | None:
    if entry is None:
        return None
    return {"message_id": entry.message_id, "status": entry.status, "at": _when(entry.at)}


def _progress(items: list[Any]) -> Iterable[Any]:
    """A progress bar on a terminal for long replays; plain lines are printed otherwise."""
    if len(items) <= 20 or not sys.stdout.isatty():
        yield from items
        return
    from rich.progress import track

    yield from track(items, description="replaying")
