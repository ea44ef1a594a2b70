"""``cutover rollout``: move every client of an entity to ``new`` in waves, with guardrails.

The logic is :mod:`flags.rollout`; this module parses, prints and sets exit codes:
0 done (or the action asked for was done), 2 refused or bad input (nothing changed
unless said), 3 the plan did not finish (paused, stopped or aborted: the reason is
printed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from core.redaction import redact

from .gate import GateRefused
from .rollout_state import ACTIVE, DONE, RolloutError
from .stages import FlagError, InputError

NOT_FINISHED = 3


class _RolloutGroup(click.Group):
    """Refusals, bad input and flag-backend failures end as ``error: ...``, exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (RolloutError, GateRefused, FlagError, InputError) as exc:
            click.secho(f"error: {redact(str(exc))}", fg="red", err=True)
            sys.exit(2)


def _rollout(actor: str | None = None) -> Any:
    from stores.runtime import Runtime

    from .rollout import Rollout

    return Rollout(Runtime(), actor=actor, say=click.echo)


@click.group(cls=_RolloutGroup)
def rollout() -> None:
    """Move every client of an entity to the new store in waves, with guardrails.

    \b
    A plan is ordered waves: an optional pilot (explicit clients, e.g. the busiest),
    then cohorts of growing percentages (default 1,10,50,100). Each wave:
      check   the gate's verdict on every client it switches (refused: paused)
      shadow  its clients read RethinkDB and compare the SQL store, for --bake
      new     its clients read the SQL store, watched for --watch (default: --bake)
    While a wave bakes or is watched, its clients' shadow mismatch rate and 5xx rate
    are checked (CUTOVER_ROLLOUT_* settings); past a limit the wave rolls back by
    itself and the plan pauses, saying which limit and the figures. The plan lives in
    the SQL store: `run` resumes after any crash without repeating or skipping a wave,
    and only one `run` acts at a time. `cutover flags kill` stops it.

    \b
      cutover rollout plan E --waves 1,10,50,100 --bake 30m --dry-run
      cutover rollout run E        (make rollout ENTITY=E)
      cutover rollout status E
    """


_PLAN_OPTIONS = [
    click.option("--waves", help="Cohort percentages, increasing (default 1,10,50,100)."),
    click.option("--bake", help="Time in shadow per wave: 30m, 90s, 1h30m, 0 (default 30m)."),
    click.option("--watch", help="Time watched in new per wave (default: the bake time)."),
    click.option("--pilot", "pilot", multiple=True, help="A pilot client (repeatable)."),
    click.option(
        "--pilot-from",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Pilot clients from a file, one id per line.",
    ),
    click.option(
        "--pilot-busiest",
        type=click.IntRange(min=0),
        default=0,
        help="Add the N busiest clients (shadow comparisons and reads served, then rows).",
    ),
    click.option("--actor", help="Who is acting (default: user@host)."),
]


def _plan_options(fn: Any) -> Any:
    for option in reversed(_PLAN_OPTIONS):
        fn = option(fn)
    return fn


def _given(opts: dict[str, Any]) -> bool:
    return any(
        opts.get(k) for k in ("waves", "bake", "watch", "pilot", "pilot_from", "pilot_busiest")
    )


def _spec(r: Any, entity: str, opts: dict[str, Any]) -> Any:
    from .rollout import read_pilot_file

    pilot = list(opts.get("pilot") or ())
    if opts.get("pilot_from"):
        pilot += read_pilot_file(opts["pilot_from"])
    return r.spec(
        entity,
        waves=opts.get("waves"),
        bake=opts.get("bake"),
        watch=opts.get("watch"),
        pilot=pilot,
        pilot_busiest=opts.get("pilot_busiest") or 0,
    )


@rollout.command("plan")
@click.argument("entity")
@_plan_options
@click.option("--dry-run", is_flag=True, help="Show the waves and the gate's verdicts only.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plan_cmd(entity: str, dry_run: bool, as_json: bool, **opts: Any) -> None:
    """Define ENTITY's rollout plan (or, with --dry-run, only show it).

    The waves are printed with the known clients each would switch to new and the
    gate's verdict on them now. A plan that has started cannot be edited: abort it
    first (every client stays where it is; the new plan starts from there).
    """
    r = _rollout(opts.get("actor"))
    try:
        spec = _spec(r, entity, opts)
        preview = r.preview(entity, spec)
        if dry_run:
            _echo_preview(preview, as_json, dry_run=True)
            return
        row, created = r.plan(entity, spec)
    finally:
        r.close()
    _echo_preview(preview, as_json, dry_run=False)
    if not as_json:
        verb = "recorded" if created else "unchanged (the same as the plan in place)"
        click.echo(
            f"plan {row.plan_id[:8]} {verb}; `cutover rollout run {preview.entity}` carries it out"
        )


@rollout.command("run")
@click.argument("entity")
@_plan_options
@click.option("--dry-run", is_flag=True, help="Show the waves and the gate's verdicts only.")
def run_cmd(entity: str, dry_run: bool, **opts: Any) -> None:
    """Carry out ENTITY's plan until it is done, paused or stopped.

    With no plan for ENTITY yet, one is made from the options (defaults: waves
    1,10,50,100, bake 30m). A plan in place runs from where it is (after a crash too);
    options that differ from it are refused while it runs. A plan that has ended (done,
    aborted, stopped by the kill switch) is not run again: give the options of a new
    one. Exit 0 when done, 3 when it paused or was stopped (the reason is printed), 2
    when refused (e.g. another run holds the plan).
    """
    from .rollout import PlanSpec

    r = _rollout(opts.get("actor"))
    try:
        current = r.load(entity)
        make = _given(opts) or current is None
        if current is not None and not make and current.state not in ACTIVE:
            raise RolloutError(
                f"the {current.entity} plan has ended ({current.state}: {current.reason}); "
                f"nothing to run. Give the waves of a new one (`cutover rollout run "
                f"{current.entity} --waves 1,10,50,100 --bake 30m`, or `rollout plan`)"
            )
        spec = _spec(r, entity, opts) if make else PlanSpec.from_json(current.definition)
        if dry_run:
            _echo_preview(r.preview(entity, spec), False, dry_run=True)
            return
        if make:
            row, created = r.plan(entity, spec)
            if created:
                click.echo(f"plan {row.plan_id[:8]} recorded")
        end = r.run(entity)
    finally:
        r.close()
    _finish(end)


def _finish(row: Any) -> None:
    if row.state == DONE:
        click.echo(f"{row.entity}: plan {row.plan_id[:8]} done: {row.reason}")
        return
    click.secho(f"{row.entity}: plan {row.plan_id[:8]} is {row.state}: {row.reason}", fg="yellow")
    sys.exit(NOT_FINISHED)


@rollout.command("status")
@click.argument("entity")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(entity: str, as_json: bool) -> None:
    """ENTITY's plan: state, waves and their progress, guardrail figures, the run
    holding it, and its recent events."""
    r = _rollout()
    try:
        report = r.report(entity)
    finally:
        r.close()
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    _echo_report(report)


@rollout.command("pause")
@click.argument("entity")
@click.option("--reason", help="Why; kept in the plan's events.")
@click.option("--actor", help="Who is acting (default: user@host).")
def pause_cmd(entity: str, reason: str | None, actor: str | None) -> None:
    """Pause ENTITY's plan: a running `run` stops after the step in hand (every
    client stays where it is; nobody watches the guardrails while paused)."""
    r = _rollout(actor)
    try:
        row = r.pause(entity, reason)
    finally:
        r.close()
    click.echo(f"{row.entity}: plan {row.plan_id[:8]} paused at wave {row.wave + 1} ({row.phase})")


@rollout.command("resume")
@click.argument("entity")
@click.option("--no-run", is_flag=True, help="Only clear the pause; run it elsewhere.")
@click.option("--actor", help="Who is acting (default: user@host).")
def resume_cmd(entity: str, no_run: bool, actor: str | None) -> None:
    """Clear ENTITY's pause and carry the plan on here (a wave rolled back starts
    again, with fresh guardrail counts)."""
    r = _rollout(actor)
    try:
        row = r.resume(entity)
        click.echo(f"{row.entity}: plan {row.plan_id[:8]} resumed at wave {row.wave + 1}")
        if no_run:
            return
        end = r.run(entity)
    finally:
        r.close()
    _finish(end)


@rollout.command("abort")
@click.argument("entity")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--reason", help="Why; kept in the plan's events.")
@click.option("--actor", help="Who is acting (default: user@host).")
def abort_cmd(entity: str, yes: bool, reason: str | None, actor: str | None) -> None:
    """End ENTITY's plan. The flags are not touched: every client stays where it is
    (`cutover flags cohort` or `cutover flags kill` send them back)."""
    if not yes:
        click.confirm(f"End the {entity} rollout plan (clients stay where they are)?", abort=True)
    r = _rollout(actor)
    try:
        row = r.abort(entity, reason)
        flags = r.report(entity)["flags"]
    finally:
        r.close()
    cohorts = flags["cohorts"]
    click.echo(
        f"{row.entity}: plan {row.plan_id[:8]} aborted at wave {row.wave + 1} ({row.phase}); "
        f"the flags stay as they are: shadow {cohorts['shadow']}%, new {cohorts['new']}%, "
        f"{flags['exceptions']} held back"
    )


# -- printing -------------------------------------------------------------------------------
def _echo_preview(preview: Any, as_json: bool, *, dry_run: bool) -> None:
    if as_json:
        click.echo(json.dumps({**preview.to_json(), "dry_run": dry_run}, indent=2))
        return
    head = "rollout plan (dry run, nothing changed)" if dry_run else "rollout plan"
    click.secho(f"{preview.entity}: {head}: {preview.spec.describe()}", bold=True)
    click.echo(f"  {preview.known} known clients, {preview.held} held back")
    for w in preview.waves:
        click.echo(
            f"  wave {w.wave.index + 1}  {w.wave.label:22}  {w.to_new:7} to new   {w.verdict()}"
        )
    click.echo("  the gate's verdicts are as of now; each wave is checked again when it starts")


def _pct(rate: Any) -> str:
    return "-" if rate is None else f"{rate:.2%}"


def _echo_report(report: dict[str, Any]) -> None:
    plan = report["plan"]
    if plan is None:
        click.echo(
            f"{report['entity']}: no rollout plan (`cutover rollout plan {report['entity']}`)"
        )
        return
    lease = plan["lease"]
    who = (
        f"run by {lease['owner']} (lease until {lease['expires']})"
        if lease["live"]
        else (
            "no run holds it"
            + (": `cutover rollout run` resumes it" if plan["state"] == "running" else "")
        )
    )
    click.secho(f"{report['entity']}: plan {plan['plan_id'][:8]} {plan['state']}, {who}", bold=True)
    click.echo(f"  {plan['describe']}")
    if plan["reason"]:
        click.echo(f"  reason: {plan['reason']}")
    flags = report["flags"]
    click.echo(
        f"  flags: shadow cohort {flags['cohorts']['shadow']}%, new cohort "
        f"{flags['cohorts']['new']}%, {flags['exceptions']} held back"
        + ("; every client reads new" if flags["everyone_new"] else "")
    )
    for w in report["waves"]:
        line = f"  wave {w['wave']}  {w['label']:22}  {w['progress']}"
        guard = w.get("guard")
        if guard:
            line += (
                f"   mismatches {guard['mismatches']}/{guard['comparisons']} "
                f"({_pct(guard['mismatch_rate'])}), 5xx {guard['server_errors']}/"
                f"{guard['served']} ({_pct(guard['error_rate'])})"
            )
            if guard.get("tripped"):
                line += "   TRIPPED"
        if w.get("rolled_back"):
            line += f"   (rolled back {w['rolled_back']}x)"
        click.echo(line)
    events = report["events"][-10:]
    if events:
        click.echo("  recent events:")
    for e in events:
        wave = f"wave {e['wave'] + 1} " if e["wave"] is not None else ""
        click.echo(
            f"    {e['at'][:19]}Z  {wave}{e['event']}  {e['actor']}  {e['detail'] or ''}".rstrip()
        )
