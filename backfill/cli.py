"""``cutover backfill run|pause|resume|status`` and ``cutover verify``.

``cutover/cli.py`` mounts :data:`backfill` and :data:`verify`; ``python -m backfill.cli``
runs the same commands standalone (used by the crash tests, and handy on a worker
machine that only has this package).
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import click

from core.clock import now_utc
from stores.runtime import Runtime

from . import control, ledger
from .partitions import PENDING, RestartRefused, partitions_of, runs_for
from .producer import PROCESS_THRESHOLD, ReaderGone
from .runner import DEFAULT_BATCH, DEFAULT_RATE, Backfill, Options, Summary, read_clients_file
from .sources import ExportSource, RethinkSource, Source, SourceError
from .verify import Verifier


class BackfillError(click.ClickException):
    """A known backfill failure: one line, exit code 2 (like the root's known errors)."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.secho(f"error: {self.format_message()}", fg="red", err=True)


def _source(rt: Runtime, export: Path | None) -> Source:
    if export is not None:
        try:
            return ExportSource(export)
        except SourceError as exc:
            raise BackfillError(str(exc)) from None
    return RethinkSource(rt.rethink)


def _clients(client: tuple[str, ...], clients_file: Path | None) -> list[str] | None:
    chosen = list(dict.fromkeys(client))
    if clients_file is not None:
        chosen += [c for c in read_clients_file(str(clients_file)) if c not in chosen]
    return chosen or None


_EXPORT = click.option(
    "--from-export",
    "export",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Read a `rethinkdb export` folder (<db>/<table>.json or .jsonl) instead of the live "
    "RethinkDB named by the CUTOVER_RETHINKDB_* settings.",
)
_CLIENT = click.option("--client", "client", multiple=True, help="Only this client (repeatable).")
_CLIENTS_FILE = click.option(
    "--clients-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Only the clients listed in this file, one id per line (# comments allowed).",
)


@click.group()
def backfill() -> None:
    """Copy the old RethinkDB history into the SQL store, while the double-write runs.

    \b
    Every row goes through the same version-guarded write as the new subscription: a
    backfilled row never overwrites a newer double-written version and never brings a
    deleted row back. A checkpoint commits with every batch: after a crash (even
    SIGKILL) the same command resumes, copying at most one batch again. Several
    workers or machines may run the same command: they share the work through leases
    in the SQL store. Start it after the new subscription is running.
    """


@backfill.command("run")
@click.argument("entity")
@_CLIENT
@_CLIENTS_FILE
@click.option(
    "--active-first",
    "active_first",
    is_flag=False,
    flag_value="-",
    default=None,
    metavar="[FILE]",
    help="Copy the busiest clients first, so they are ready for cutover early: in "
    "the order of FILE (most active first, one id per line; unlisted clients "
    "follow), or without FILE by their number of documents.",
)
@click.option(
    "--batch",
    type=click.IntRange(1, 100_000),
    default=DEFAULT_BATCH,
    show_default=True,
    help="Documents per batch (and per checkpoint).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=DEFAULT_RATE,
    show_default=True,
    help="Documents read per second from the old store, this process; 0 = no limit.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Parallel workers in this process; other machines may run the same command.",
)
@click.option(
    "--reader-process/--no-reader-process",
    "reader_process",
    default=None,
    help="Read, map and serialise batches in a child process per worker, overlapping the "
    "commits, which then run two at a time (in order). Default: when the run has "
    f"{PROCESS_THRESHOLD:,} rows or more.",
)
@click.option("--dry-run", is_flag=True, help="Read and map everything, write nothing.")
@click.option(
    "--restart", is_flag=True, help="Copy again from the start even if this run completed before."
)
@click.option(
    "--lease-ttl",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds before a silent worker's partition may be taken over.",
)
@_EXPORT
def run_cmd(
    entity: str,
    client: tuple[str, ...],
    clients_file: Path | None,
    active_first: str | None,
    batch: int,
    rate: float,
    workers: int,
    reader_process: bool | None,
    dry_run: bool,
    restart: bool,
    lease_ttl: float,
    export: Path | None,
) -> None:
    """Copy ENTITY's history from the old store into the SQL store.

    Exit code 0 when the run is complete with no bad documents, 1 when documents could
    not be mapped (they are listed; nothing is dropped silently) or the run stopped.
    """
    rt = Runtime()
    ent = rt.cfg.entity(entity)
    chosen = _clients(client, clients_file)
    priority: tuple[str, ...] = ()
    if active_first and active_first != "-":
        if not Path(active_first).is_file():
            raise click.BadParameter(f"no such file: {active_first}", param_hint="--active-first")
        priority = tuple(read_clients_file(active_first))
    options = Options(
        batch=batch,
        rate=rate,
        workers=workers,
        clients=tuple(chosen) if chosen else None,
        active_first=active_first is not None,
        priority=priority,
        restart=restart,
        lease_ttl_s=lease_ttl,
        processes=reader_process,
    )
    source = _source(rt, export)
    if active_first is not None and export is not None:
        click.echo(
            "note: --active-first does not apply to an export folder (read in file order)", err=True
        )
    with _known_errors():
        job = Backfill(rt.sql, source, ent, options, emit=lambda line: click.echo(line, err=True))

    def on_term(signum: int, frame: FrameType | None) -> None:
        job.stop()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with _known_errors():
            summary = job.dry_run() if dry_run else job.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
        rt.close()
    _finish(summary)


@contextmanager
def _known_errors() -> Iterator[None]:
    """A source that cannot be read, a --restart refused, a reader process that died:
    one line, exit code 2."""
    try:
        yield
    except (SourceError, RestartRefused, ReaderGone) as exc:
        raise BackfillError(str(exc)) from None


def _finish(summary: Summary) -> None:
    click.echo("\n".join(summary.lines()))
    if summary.bad or not summary.complete:
        sys.exit(1)


@backfill.command("pause")
@click.argument("entity")
@click.option("--reason", default="", help="Shown by `status`.")
def pause_cmd(entity: str, reason: str) -> None:
    """Pause ENTITY's backfill on every worker (within one batch); leases are kept."""
    rt = Runtime()
    rt.cfg.entity(entity)
    ledger.ensure_tables(rt.sql)
    control.set_paused(rt.sql, entity, True, reason)
    click.echo(
        f"backfill {entity}: paused (workers stop at their current batch, "
        "which is copied again on resume)"
    )


@backfill.command("resume")
@click.argument("entity")
def resume_cmd(entity: str) -> None:
    """Let paused workers of ENTITY go on (a stopped run: start `run` again)."""
    rt = Runtime()
    rt.cfg.entity(entity)
    ledger.ensure_tables(rt.sql)
    control.set_paused(rt.sql, entity, False)
    click.echo(f"backfill {entity}: resumed")


@backfill.command("status")
@click.argument("entity")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(entity: str, as_json: bool) -> None:
    """Runs, partitions, leases and the per-client ledger of ENTITY."""
    rt = Runtime()
    rt.cfg.entity(entity)
    ledger.ensure_tables(rt.sql)
    data = status_data(rt, entity)
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    click.echo(f"backfill {entity}: {'PAUSED' if data['paused'] else 'not paused'}")
    for run in data["runs"]:
        click.echo(
            f"run {run['run_id']} [{run['status']}] {json.dumps(run['source'])} "
            f"clients={run['selection'] or 'all'}: {run['done']}/{run['partitions']} partitions, "
            f"{run['read']:,} read, {run['applied']:,} applied, {run['stale']:,} already newer, "
            f"{run['bad']:,} bad"
        )
        for lease in run["leases"]:
            click.echo(
                f"  {lease['part']}: leased by {lease['owner']} "
                f"(expires in {lease['expires_in_s']:.0f} s), at {lease['last_key']}"
            )
    click.echo("ledger (client: state, rows copied, copied at, last verification):")
    for e in data["ledger"]:
        verdict = (
            "never"
            if e["last_verification_clean"] is None
            else f"{'clean' if e['last_verification_clean'] else 'DIFFERENCES'} "
            f"({e['differences']}) {e['last_verification_mode']} at {e['verified_at']}"
        )
        click.echo(
            f"  {e['client']}: {e['state']}, {e['rows_copied']:,} rows, "
            f"{e['copied_at'] or '-'}, {verdict}"
        )


def status_data(rt: Runtime, entity: str) -> dict[str, Any]:
    now = now_utc()
    runs = []
    for run in reversed(runs_for(rt.sql, entity)):
        parts = partitions_of(rt.sql, run.run_id)
        runs.append(
            {
                "run_id": run.run_id,
                "status": run.status,
                "source": run.source,
                "selection": run.selection,
                "partitions": len(parts),
                "done": sum(p.status != PENDING for p in parts),
                "read": sum(p.rows_read for p in parts),
                "applied": sum(p.rows_applied for p in parts),
                "stale": sum(p.rows_stale for p in parts),
                "bad": sum(p.bad_docs for p in parts),
                "created_at": run.created_at,
                "finished_at": run.finished_at,
                "leases": [
                    {
                        "part": p.part,
                        "owner": p.owner,
                        "last_key": p.last_key,
                        "expires_in_s": (p.lease_expires - now).total_seconds(),
                    }
                    for p in parts
                    if p.owner and p.lease_expires and p.status == PENDING
                ],
            }
        )
    return {
        "entity": entity,
        "paused": control.is_paused(rt.sql, entity),
        "runs": runs,
        "ledger": [e.__dict__ for e in ledger.entries(rt.sql, entity)],
    }


@click.command("verify")
@click.argument("entity")
@_CLIENT
@_CLIENTS_FILE
@click.option("--sample", type=click.IntRange(min=1), help="Check N random keys per client.")
@click.option("--full", is_flag=True, help="Check every key (the default).")
@click.option(
    "--repair",
    is_flag=True,
    help="Re-copy differing keys from the old store (version rules), then re-check.",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the JSON report here (default: <state_dir>/reports/).",
)
@click.option(
    "--recheck-delay",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Seconds before re-reading differences that may be in flight.",
)
@_EXPORT
def verify(
    entity: str,
    client: tuple[str, ...],
    clients_file: Path | None,
    sample: int | None,
    full: bool,
    repair: bool,
    report_path: Path | None,
    recheck_delay: float,
    export: Path | None,
) -> None:
    """Prove the old and the SQL store agree for ENTITY, client by client.

    \b
    Reports every differing key (nothing truncated) with its kind:
      missing_in_new, extra_in_new, version_mismatch, field_mismatch, bad_in_old
    and the differing fields, compared canonically (UTC datetimes, float tolerance,
    unicode NFC, JSON key order ignored). Differences that may be in flight are
    re-read after --recheck-delay first. The result goes to each client's ledger
    entry (the cutover gate reads it). Exit code 0 only when clean.
    """
    if sample and full:
        raise click.UsageError("give --sample N or --full, not both")
    rt = Runtime()
    ent = rt.cfg.entity(entity)
    ledger.ensure_tables(rt.sql)
    verifier = Verifier(
        rt.sql,
        _source(rt, export),
        ent,
        recheck_delay_s=recheck_delay,
        emit=lambda line: click.echo(line, err=True),
    )
    with _known_errors():
        report = verifier.run(
            _clients(client, clients_file), sample=sample, repair=repair, record=False
        )
    if report_path is None:
        stamp = report.started_at.strftime("%Y%m%dT%H%M%SZ")
        report_path = rt.settings.state_dir / "reports" / f"verify-{entity}-{stamp}.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report.to_json(), indent=2, default=str) + "\n")
    verifier.record(report, str(report_path))
    rt.close()
    click.echo("\n".join(report.summary_lines()))
    click.echo(f"report: {report_path}")
    if not report.clean:
        sys.exit(1)


class _Standalone(click.Group):
    """The two commands without the rest of ``cutover``, with the root's error handling.

    Known failures end as ``error: ...`` and exit code 2, like ``cutover.cli``'s root.
    The list mirrors ``cutover.cli.KNOWN_ERRORS`` (not imported: that module mounts every
    area, and a worker running only the backfill should not depend on them).
    """

    def invoke(self, ctx: click.Context) -> Any:
        from core.config import ConfigError
        from core.events import EventError
        from core.redaction import redact
        from stores.mapping import MappingError
        from stores.rethink import RethinkUnavailable
        from stores.sql import StoreUnavailable

        try:
            return super().invoke(ctx)
        except (ConfigError, StoreUnavailable, RethinkUnavailable, EventError, MappingError) as exc:
            click.secho(f"error: {redact(str(exc))}", fg="red", err=True)
            sys.exit(2)


standalone = _Standalone(
    "cutover",
    commands={"backfill": backfill, "verify": verify},
    help="cutover's backfill and verification commands, standalone.",
)


def main() -> None:
    """``python -m backfill.cli backfill run ...`` / ``python -m backfill.cli verify ...``."""
    standalone(prog_name="cutover")


if __name__ == "__main__":
    main()
