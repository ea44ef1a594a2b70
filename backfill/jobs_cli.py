"""``cutover jobs add|enqueue|run|status``: per-client migration jobs on Pub/Sub.

``cutover/cli.py`` mounts :data:`jobs`.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from core.config import Entity
from core.redaction import redact
from stores.runtime import Runtime

from . import jobs as jobs_mod
from . import ledger
from .runner import DEFAULT_BATCH, DEFAULT_RATE, read_clients_file
from .sources import RethinkSource, Source, SourceError

_EXPORT = click.option(
    "--from-export",
    "export",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Read a `rethinkdb export` folder instead of the live RethinkDB (indexed per "
    "client once, so each job reads only its client's part of the file).",
)


def job_source(rt: Runtime, export: Path | None) -> Source:
    """The old store a job worker (or the sweep) reads: live, or an indexed export."""
    if export is None:
        return RethinkSource(rt.rethink)
    from .export_index import ClientIndexedExport

    try:
        return ClientIndexedExport(export)
    except SourceError as exc:
        raise click.ClickException(str(exc)) from None


def client_counts(source: Source, entity: Entity) -> dict[str, int]:
    """Documents per client in the old store (the sweep's busiest-first order)."""
    from .export_index import ClientIndexedExport

    if isinstance(source, ClientIndexedExport):
        return source.counts(entity)
    if isinstance(source, RethinkSource):
        groups = source.store.count_per_client(entity)
        return {c: int(n) for c, n in groups.items() if isinstance(c, str) and c}
    return dict.fromkeys(source.clients(entity), 0)


class _JobsGroup(click.Group):
    """Pub/Sub API failures end like the root's known errors: one line, exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        from google.api_core import exceptions as gexc

        try:
            return super().invoke(ctx)
        except (gexc.GoogleAPIError, gexc.RetryError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            click.secho(f"error: Pub/Sub: {redact(message)}", fg="red", err=True)
            sys.exit(2)


@click.group(cls=_JobsGroup)
def jobs() -> None:
    """Per-client migration jobs: copy and verify one client at a time, on Pub/Sub.

    \b
    A job is "copy and verify client C of entity E". Jobs travel on the topic declared
    in cutover.toml's [jobs]; any number of `cutover jobs run` processes, on any
    machines, take them one client at a time. The read API enqueues a client's job the
    first time it serves that client unmigrated (CUTOVER_FIRST_USE_JOBS), so active
    clients go first; `enqueue --all-not-migrated` sweeps the rest.
      cutover jobs add                          create the jobs topic and subscription
      cutover jobs enqueue orders --client C    one client (or --all-not-migrated)
      cutover jobs run                          a worker (scale out: run it many times)
      cutover jobs status orders                queued, running, done, failed, rate, ETA
      cutover subs failures list                jobs that failed for good; then `replay`
    """


@jobs.command("add")
@click.option("--actor", help="Who to record in the audit log (default: the OS user).")
@click.option("--dry-run", is_flag=True, help="Say what would be created; change nothing.")
def add_cmd(actor: str | None, dry_run: bool) -> None:
    """Create the jobs topic and subscription declared in [jobs] (audited, like
    `cutover subs add`); an existing subscription is left alone."""
    from subscribers.manage import add

    rt = Runtime()
    declared = rt.cfg.jobs_or_error().as_subscription()
    change = add(rt, declared.name, actor=actor, dry_run=dry_run, declared=declared)
    for line in change.done:
        click.echo(f"{change.subscription}: {line}")
    for line in change.left:
        click.secho(f"{change.subscription}: still differs: {line}", fg="yellow")


@jobs.command("enqueue")
@click.argument("entity")
@click.option("--client", "client", multiple=True, help="This client (repeatable).")
@click.option(
    "--active-first",
    "active_first",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Clients in this file first, in its order (most active first, one id per line, "
    "# comments allowed); with --all-not-migrated the rest follow, busiest first.",
)
@click.option(
    "--all-not-migrated",
    is_flag=True,
    help="Every client of the old store (and of the ledger) not verified yet: the sweep.",
)
@click.option(
    "--window",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    help="Seconds a queued job keeps a client from being enqueued again.",
)
@click.option("--dry-run", is_flag=True, help="List what would be enqueued; publish nothing.")
@_EXPORT
def enqueue_cmd(
    entity: str,
    client: tuple[str, ...],
    active_first: Path | None,
    all_not_migrated: bool,
    window: float,
    dry_run: bool,
    export: Path | None,
) -> None:
    """Publish one job per client of ENTITY that needs one, in the order asked.

    Clients already verified in the ledger are skipped, and so are clients whose job is
    running or was queued less than --window ago (by anyone: the API, another sweep).
    """
    rt = Runtime()
    ent = rt.cfg.entity(entity)
    rt.cfg.jobs_or_error()
    first = read_clients_file(str(active_first)) if active_first else []
    if not (client or first or all_not_migrated):
        raise click.UsageError("name clients: --client, --active-first FILE or --all-not-migrated")
    wanted = [*first, *client]
    reason = "cli"
    if all_not_migrated:
        reason = "sweep"
        counts = client_counts(job_source(rt, export), ent)
        ledger.ensure_tables(rt.sql)
        known = set(counts) | {e.client for e in ledger.entries(rt.sql, ent.name)}
        wanted += jobs_mod.sweep_order(known, first=wanted, counts=counts)
    done = jobs_mod.enqueue(
        rt, ent.name, list(dict.fromkeys(wanted)), reason=reason, window_s=window, dry_run=dry_run
    )
    verb = "would enqueue" if dry_run else "enqueued"
    for name in done.published:
        click.echo(f"{verb} {ent.name}/{name}")
    reasons: dict[str, int] = {}
    for why in done.skipped.values():
        key = why.split(" at ")[0].split(" on ")[0]
        reasons[key] = reasons.get(key, 0) + 1
    skipped = ", ".join(f"{n} {k}" for k, n in sorted(reasons.items()))
    click.echo(f"{verb} {len(done.published)} job(s)" + (f"; skipped {skipped}" if skipped else ""))
    rt.close()


@jobs.command("run")
@_EXPORT
@click.option("--max-jobs", type=click.IntRange(min=1), help="Exit after settling N messages.")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    help="Jobs at once in this process (default: [jobs] concurrency).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=DEFAULT_RATE,
    show_default=True,
    help="Documents read per second by each copy; 0 = no limit.",
)
@click.option(
    "--batch",
    type=click.IntRange(1, 100_000),
    default=DEFAULT_BATCH,
    show_default=True,
    help="Documents per batch (and per checkpoint) of each copy.",
)
@click.option(
    "--recheck-delay",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Seconds before verification re-reads differences that may be in flight.",
)
@click.option("--metrics-port", type=int, help="Serve Prometheus metrics on this port.")
def run_cmd(
    export: Path | None,
    max_jobs: int | None,
    concurrency: int | None,
    rate: float,
    batch: int,
    recheck_delay: float,
    metrics_port: int | None,
) -> None:
    """Run jobs from the jobs subscription until SIGTERM/SIGINT (or --max-jobs).

    \b
    Each job copies its client through the backfill's version-guarded, checkpointed
    path, verifies it (recorded in the ledger) and is acked only then. A client already
    verified from the same source finishes at once; a client another worker is running
    waits for it. A failed job is retried with backoff and, after [jobs]
    max_delivery_attempts, recorded in the failure log (`cutover subs failures`).
    SIGTERM: stop pulling, finish the job(s) in hand, exit 0; a second SIGTERM hands
    them back at their next batch (they resume from their checkpoint elsewhere).
    """
    from .job_worker import JobOptions, JobWorker

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    rt = Runtime()
    options = JobOptions(rate=rate, batch=batch, recheck_delay_s=recheck_delay, max_jobs=max_jobs)
    worker = JobWorker(rt, job_source(rt, export), options, concurrency=concurrency)
    if metrics_port is not None:
        from prometheus_client import REGISTRY, start_http_server

        from .jobs_metrics import watch

        watch(rt)
        start_http_server(metrics_port, addr=rt.settings.api_host, registry=REGISTRY)
    code = worker.run()
    if worker.error:
        click.secho(f"error: {redact(worker.error)}", fg="red", err=True)
    rt.close()
    sys.exit(code)


@jobs.command("status")
@click.argument("entity")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(entity: str, as_json: bool) -> None:
    """Jobs of ENTITY: queued (and the subscription's backlog where the server reports
    it), running, retrying, done, failed; the rate of the last 10 minutes and the ETA."""
    from subscribers.manage import backlog

    rt = Runtime()
    ent = rt.cfg.entity(entity)
    jobs_cfg = rt.cfg.jobs_or_error()
    st = jobs_mod.status(rt.sql, ent.name, backlog=backlog(rt.settings, jobs_cfg.subscription))
    rt.close()
    data = st.to_json()
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    backlog_text = "not reported by this server" if st.backlog is None else f"{st.backlog:,}"
    eta = "-" if st.eta_s is None else _duration(st.eta_s)
    click.echo(
        f"jobs {ent.name}: {data['queued']:,} queued (subscription backlog: {backlog_text}), "
        f"{data['running']:,} running, {data['retrying']:,} retrying, {data['done']:,} done, "
        f"{data['failed']:,} failed"
    )
    click.echo(
        f"  rate {st.rows_per_s:,.0f} rows/s, {st.jobs_per_s * 60:,.1f} jobs/min (last "
        f"{jobs_mod.RATE_WINDOW_S / 60:.0f} min); ETA {eta}; "
        f"{st.not_migrated:,} client(s) in the ledger not verified yet"
    )
    if st.stale:
        click.secho(
            f"  {st.stale} running job(s) with an expired lease (worker gone?)", fg="yellow"
        )
    for job in st.running:
        click.echo(f"  running {job['client']} on {job['owner']} since {job['since']}")
    for job in st.failed:
        click.echo(f"  FAILED {job['client']}: {(job['last_error'] or '')[:200]}")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
