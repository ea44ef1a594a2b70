"""``cutover flags``: see and change each client's read stage, with audit and gate."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from cutover.redaction import redact

from .gate import GateRefused
from .stages import ClientIdError, FlagError, Stage


class _FlagsGroup(click.Group):
    """Refusals and flag-backend failures end as ``error: ...`` with exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (GateRefused, FlagError, ClientIdError) as exc:
            click.secho(f"error: {redact(str(exc))}", fg="red", err=True)
            sys.exit(2)


def _service() -> Any:
    from cutover.runtime import Runtime

    from .service import FlagService

    return FlagService(Runtime())


@click.group(cls=_FlagsGroup)
def flags() -> None:
    """Per-client read stages (old -> shadow -> new), kept in Unleash or a local file.

    \b
    Stages, per entity and client:
      old     reads come from RethinkDB (the default)
      shadow  reads come from RethinkDB; the SQL store is read in the background and
              every difference is counted and recorded
      new     reads come from the SQL store
    Each stage is a flag `cutover.<ENTITY>.shadow|new` constrained on `clientId IN
    [...]` (exact ids). With CUTOVER_UNLEASH_URL set they live in Unleash (visible and
    editable in its UI); otherwise in <state_dir>/flags/flags.json. Every change is
    audited (who, when, from, to, reason) in the SQL store.
    """


@flags.command("status")
@click.argument("entity", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(entity: str | None, as_json: bool) -> None:
    """Every client's stage and when, by whom and why it was last set.

    Without ENTITY, every configured entity. A stage that differs from the last audited
    change was edited outside cutover (e.g. in Unleash's UI) and is marked so.
    """
    service = _service()
    try:
        names = [entity] if entity else list(service.runtime.cfg.entities)
        reports = [service.status(name) for name in names]
    finally:
        service.close()
    if as_json:
        click.echo(json.dumps([_report_json(r) for r in reports], indent=2))
        return
    for report in reports:
        click.secho(f"{report.entity}  ({report.where})", bold=True)
        for warning in report.warnings:
            click.secho(f"  WARNING: {warning}", fg="red")
        if not report.clients:
            click.echo("  no clients")
        width = max([6, *(len(c.client_id) for c in report.clients)])
        click.echo(f"  {'CLIENT':{width}}  {'STAGE':6}  {'SINCE':20}  {'BY':24}  REASON")
        for row in report.clients:
            last = row.last
            since = last.at.strftime("%Y-%m-%d %H:%M:%SZ") if last else "-"
            by = last.actor if last else "-"
            note = (last.reason or "") if last else ""
            if last and last.forced:
                note += " [forced]"
            if row.changed_outside:
                note += " [changed outside cutover]"
            click.echo(
                f"  {row.client_id:{width}}  {row.stage.value:6}  {since:20}  "
                f"{by[:24]:24}  {note.strip()}"
            )


def _report_json(report: Any) -> dict[str, Any]:
    return {
        "entity": report.entity,
        "backend": report.where,
        "warnings": report.warnings,
        "clients": [
            {
                "client": row.client_id,
                "stage": row.stage.value,
                "changed_outside": row.changed_outside,
                "last_change": row.last.to_json() if row.last else None,
            }
            for row in report.clients
        ],
    }


def _echo_change(change: Any, entity: str, client: str, stage: str) -> None:
    if change is None:
        click.echo(f"{entity}/{client} already at {stage}; nothing changed")
        return
    forced = " (FORCED: " + (change.gate or "") + ")" if change.forced else ""
    click.echo(
        f"{entity}/{client}: {change.from_stage} -> {change.to_stage} by {change.actor}{forced}"
    )


@flags.command("set")
@click.argument("entity")
@click.argument("client")
@click.argument("stage", type=click.Choice([s.value for s in Stage]))
@click.option("--reason", help="Why; kept in the audit.")
@click.option(
    "--force",
    is_flag=True,
    help="Override the gate (and the unknown-client check); recorded in the audit.",
)
@click.option("--actor", help="Who is making the change (default: user@host).")
def set_stage(
    entity: str, client: str, stage: str, reason: str | None, force: bool, actor: str | None
) -> None:
    """Move CLIENT's reads of ENTITY to STAGE (old, shadow or new).

    `new` is refused unless the client's backfill is complete and its latest
    verification is clean and recent (CUTOVER_GATE_MAX_VERIFICATION_AGE_S); the
    message says which condition failed. API processes see the change within about
    two refresh intervals (CUTOVER_UNLEASH_REFRESH_INTERVAL_S).
    """
    service = _service()
    try:
        change = service.set_stage(entity, client, stage, actor=actor, reason=reason, force=force)
    finally:
        service.close()
    _echo_change(change, entity, client, stage)


@flags.command("rollback")
@click.argument("entity")
@click.argument("client")
@click.option("--reason", help="Why; kept in the audit.")
@click.option("--actor", help="Who is making the change (default: user@host).")
def rollback(entity: str, client: str, reason: str | None, actor: str | None) -> None:
    """Send CLIENT's reads of ENTITY back to RethinkDB (stage old) now.

    No gate and no store is needed: it works while the SQL store is down (the audit
    record then waits in a local file until the store is back).
    """
    service = _service()
    try:
        change = service.rollback(entity, client, actor=actor, reason=reason)
    finally:
        service.close()
    _echo_change(change, entity, client, Stage.OLD.value)


@flags.command("kill")
@click.argument("entity")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--reason", help="Why; kept in the audit.")
@click.option("--actor", help="Who is making the change (default: user@host).")
def kill(entity: str, yes: bool, reason: str | None, actor: str | None) -> None:
    """Kill switch: EVERY client of ENTITY back to old (RethinkDB) at once.

    Both stage flags are switched off first (one step for all clients), then their
    client lists are cleared. Each affected client gets an audit record.
    """
    if not yes:
        click.confirm(f"Send every client's {entity} reads back to RethinkDB?", abort=True)
    service = _service()
    try:
        changes = service.kill(entity, actor=actor, reason=reason)
    finally:
        service.close()
    click.echo(
        f"{entity}: kill switch applied; {len(changes)} client(s) back to old"
        + (": " + ", ".join(c.client_id for c in changes) if changes else "")
    )


@flags.command("history")
@click.argument("entity")
@click.argument("client", required=False)
def history(entity: str, client: str | None) -> None:
    """Every audited stage change of ENTITY (or one CLIENT), oldest first."""
    service = _service()
    try:
        name = service.runtime.cfg.entity(entity).name
        service.ensure_schema()
        service.audit.flush_pending()
        changes = service.audit.history(name, client)
    finally:
        service.close()
    for c in changes:
        forced = " [forced]" if c.forced else ""
        click.echo(
            f"{c.at:%Y-%m-%d %H:%M:%SZ}  {c.client_id}  {c.from_stage} -> {c.to_stage}  "
            f"{c.actor}  {c.reason or ''}{forced}  {c.gate or ''}".rstrip()
        )
    if not changes:
        click.echo("no changes recorded")
