"""``cutover flags``: see and change each client's read stage, with audit and gate."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from core.redaction import redact

from .evidence_cli import evidence as evidence_command
from .gate import GateRefused
from .stages import FlagError, InputError, Stage

#: Up to this many known clients, status lists every one; beyond, only those a list
#: names or whose stage the audit does not explain (all of them with --all).
STATUS_ALL_UP_TO = 50


class _FlagsGroup(click.Group):
    """Refusals, bad input and flag-backend failures end as ``error: ...``, exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (GateRefused, FlagError, InputError) as exc:
            click.secho(f"error: {redact(str(exc))}", fg="red", err=True)
            sys.exit(2)


def _service() -> Any:
    from stores.runtime import Runtime

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
    Each stage is a flag `cutover.<ENTITY>.shadow|new` holding, for any number of
    clients:
      a pilot list   exact clientIds (`flags set`), at most 250 per list (Unleash's
                     UNLEASH_CONSTRAINT_VALUES_LIMIT)
      a cohort       PERCENT of all clients by a hash of their clientId (`flags
                     cohort`; 100 = everyone), the same clients each time: Unleash's
                     gradual rollout with clientId stickiness
      exceptions     clients held back from the cohort (`flags except`, and every
                     move back such as `flags rollback`)
    `new` wins over `shadow`. With CUTOVER_UNLEASH_URL set the flags live in Unleash
    (visible and editable in its UI; edits are shown as made outside cutover);
    otherwise in <state_dir>/flags/flags.json. Every change is audited (who, when,
    from, to, reason) in the SQL store.
    """


@flags.command("status")
@click.argument("entity", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (every client).")
@click.option("--all", "show_all", is_flag=True, help="List every known client.")
def status(entity: str | None, as_json: bool, show_all: bool) -> None:
    """Pilot lists, cohorts, exceptions, counts by stage, and the clients.

    Without ENTITY, every configured entity. Each client's stage comes with why (VIA:
    pilot list, cohort, held back, default old, or outside: a strategy or switch
    cutover did not make) and when, by whom and why it last changed. Up to 50 known
    clients are all listed; beyond, those in a list or changed outside cutover (every
    one with --all). A stage that differs from the audit was edited outside cutover
    (e.g. in Unleash's UI) and is marked so.
    """
    service = _service()
    try:
        names = [entity] if entity else list(service.runtime.cfg.entities)
        reports = [service.status(name) for name in names]
    finally:
        service.close()
    if as_json:
        click.echo(json.dumps([r.to_json() for r in reports], indent=2))
        return
    for report in reports:
        _echo_status(report, show_all)


def _echo_status(report: Any, show_all: bool) -> None:
    click.secho(f"{report.entity}  ({report.where})", bold=True)
    for warning in report.warnings:
        click.secho(f"  WARNING: {warning}", fg="red")
    counts = report.counts
    click.echo(
        f"  {len(report.clients)} known clients: {counts['new']} new, "
        f"{counts['shadow']} shadow, {counts['old']} old"
    )
    rules = report.rules
    for stage in (Stage.NEW, Stage.SHADOW):
        rule = rules.rule(stage)
        click.echo(
            f"  {stage.value:6}  cohort {rule.percent:3}%   pilot list {len(rule.pilot):3}/"
            f"{report.list_limit}{_names(rule.pilot)}   held back {len(rule.excepted):3}/"
            f"{report.list_limit}"
        )
    held = rules.exceptions()
    if held:
        click.echo("  exceptions: " + ", ".join(f"{c} (at {s.value})" for c, s in held.items()))
    rows = report.clients
    if not show_all and len(rows) > STATUS_ALL_UP_TO:
        rows = [r for r in rows if r.via in ("pilot", "held", "outside") or r.changed_outside]
        click.echo(
            f"  {len(report.clients) - len(rows)} more clients follow the cohorts "
            "(--all lists them)"
        )
    if not report.clients:
        click.echo("  no clients")
        return
    width = max([6, *(len(c.client_id) for c in rows)])
    click.echo(f"  {'CLIENT':{width}}  {'STAGE':6}  {'VIA':7}  {'SINCE':20}  {'BY':24}  REASON")
    for row in rows:
        last = row.last
        since = last.at.strftime("%Y-%m-%d %H:%M:%SZ") if last else "-"
        by = last.actor if last else "-"
        note = (last.reason or "") if last else ""
        if last and last.forced:
            note += " [forced]"
        if row.changed_outside:
            note += " [changed outside cutover]"
        click.echo(
            f"  {row.client_id:{width}}  {row.stage.value:6}  {row.via:7}  {since:20}  "
            f"{by[:24]:24}  {note.strip()}"
        )


def _names(ids: frozenset[str], first: int = 3) -> str:
    if not ids:
        return ""
    shown = sorted(ids)[:first]
    return " (" + ", ".join(shown) + (", ..." if len(ids) > first else "") + ")"


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
    message says which condition failed. A client the cohorts do not cover joins the
    stage's pilot list (at most 250: beyond, use `flags cohort`); a move back holds
    it there (see `flags except`). API processes see the change within about two
    refresh intervals (CUTOVER_UNLEASH_REFRESH_INTERVAL_S).
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
    """Send CLIENT's reads of ENTITY back to RethinkDB (stage old) now, at any cohort
    percentage (100% included), and hold it there.

    The client leaves the pilot lists and joins the cohorts' exceptions, so a growing
    cohort skips it until `flags set ... new` or `flags except --release`. No gate
    and no store is needed: it works while the SQL store is down (the audit record
    then waits in a local file until the store is back).
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
    pilot lists, cohorts and exceptions are cleared. Each affected known client gets
    an audit record, each cohort a cohort step.
    """
    if not yes:
        click.confirm(f"Send every client's {entity} reads back to RethinkDB?", abort=True)
    service = _service()
    try:
        changes = service.kill(entity, actor=actor, reason=reason)
    finally:
        service.close()
    names = ", ".join(c.client_id for c in changes[:10]) + (", ..." if len(changes) > 10 else "")
    click.echo(
        f"{entity}: kill switch applied; {len(changes)} client(s) back to old"
        + (f": {names}" if changes else "")
    )


@flags.command("cohort")
@click.argument("entity")
@click.argument("stage", type=click.Choice([Stage.SHADOW.value, Stage.NEW.value]))
@click.argument("percent", type=click.IntRange(0, 100))
@click.option("--dry-run", is_flag=True, help="Show what the step would do; change nothing.")
@click.option("--reason", help="Why; kept in the audit.")
@click.option(
    "--force",
    is_flag=True,
    help="Override the gate for the clients that fail it; recorded in the audit.",
)
@click.option("--actor", help="Who is making the change (default: user@host).")
def cohort(
    entity: str,
    stage: str,
    percent: int,
    dry_run: bool,
    reason: str | None,
    force: bool,
    actor: str | None,
) -> None:
    """Put PERCENT% of ENTITY's clients (0..100; 100 = everyone) in STAGE.

    \b
    The cohort is chosen by a hash of the clientId (Unleash's gradual rollout with
    clientId stickiness): the same clients at every step, growing with PERCENT, and
    the new cohort inside the shadow cohort at the same or a higher percentage. Pilot
    lists stay as they are; held-back clients (`flags except`) are skipped.
    A step that switches clients to `new` is refused unless EVERY known client it
    would switch passes the gate of `flags set ... new`; cutover computes who those
    are with the SDK's own hash. A refusal says how many block the step, names the
    first ones and writes all of them to a file (its path is printed). Lowering a
    percentage needs no gate.
    """
    service = _service()
    try:
        plan = service.set_cohort(
            entity, stage, percent, actor=actor, reason=reason, force=force, dry_run=dry_run
        )
    finally:
        service.close()
    moves = plan.to_json()["moves"]
    moved = ", ".join(f"{n} {m.replace('->', ' -> ')}" for m, n in moves.items()) or "none"
    verb = "would move" if dry_run else "moved"
    head = f"{plan.entity}: {stage} cohort {plan.from_percent}% -> {plan.to_percent}%"
    if not dry_run and not plan.applied:
        click.echo(f"{head}: already there; nothing changed")
        return
    click.echo(f"{head}: {verb} {len(plan.moves)} of {plan.known} known clients ({moved})")
    if plan.unknown:
        click.secho(
            f"  the stores could not list the known clients ({plan.unknown}): only listed "
            "clients are counted and audited; the step itself is recorded",
            fg="yellow",
        )
    if plan.blocked:
        label = "FORCED past" if plan.forced else "blocked by"
        click.echo(
            f"  {label} the gate: {len(plan.blocked)} client(s), listed in {plan.refused_path}"
        )
        for client, why in plan.blocked[:5]:
            click.echo(f"    {client}: {why}")
    elif plan.to_new:
        click.echo(f"  gate: all {len(plan.to_new)} clients switching to new pass")


@flags.command("except")
@click.argument("entity")
@click.argument("client")
@click.option(
    "--stage",
    type=click.Choice([Stage.OLD.value, Stage.SHADOW.value]),
    default=Stage.OLD.value,
    show_default=True,
    help="The stage CLIENT is held at.",
)
@click.option("--release", is_flag=True, help="Drop CLIENT's exceptions instead.")
@click.option("--reason", help="Why; kept in the audit.")
@click.option(
    "--force", is_flag=True, help="Override the gate (on --release) and the unknown-client check."
)
@click.option("--actor", help="Who is making the change (default: user@host).")
def except_(
    entity: str,
    client: str,
    stage: str,
    release: bool,
    reason: str | None,
    force: bool,
    actor: str | None,
) -> None:
    """Hold CLIENT of ENTITY at old (or shadow) whatever the cohorts do.

    The client is excepted from the cohorts of the later stages (at any percentage,
    100% included, and as they grow) and leaves their pilot lists; it reads --stage
    within the propagation bound. At most 250 held clients per stage (Unleash's
    UNLEASH_CONSTRAINT_VALUES_LIMIT). --release lets it follow the cohorts again (the
    gate applies if that switches it to new now); `flags set ... new` releases too.
    """
    service = _service()
    try:
        if release:
            change = service.release(entity, client, actor=actor, reason=reason, force=force)
        else:
            change = service.hold(entity, client, stage, actor=actor, reason=reason, force=force)
    finally:
        service.close()
    if change is None:
        what = "has no exception" if release else f"already held at {stage}"
        click.echo(f"{entity}/{client} {what}; nothing changed")
        return
    click.echo(
        f"{entity}/{client}: {change.from_stage} -> {change.to_stage} "
        f"({'released' if release else f'held at {stage}'}) by {change.actor}"
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


flags.add_command(evidence_command)
