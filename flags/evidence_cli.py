"""``cutover flags evidence ENTITY``: each client's shadow evidence and the gate's verdict.

A command of its own, attached to the ``flags`` group by ``flags.add_command``; it
reads only the SQL store (:mod:`flags.evidence`), never the flag backend.
"""

from __future__ import annotations

import json
from dataclasses import replace

import click

from core.clock import now_utc

from .evidence import ClientEvidence, ShadowPolicy, evidence_of_all, shadow_verdict, span, totals


@click.command("evidence")
@click.argument("entity")
@click.option("--client", "clients", multiple=True, help="Only this client (repeatable).")
@click.option(
    "--window",
    "window_s",
    type=click.IntRange(min=60),
    help="Seconds to look back (default CUTOVER_GATE_SHADOW_WINDOW_S).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Clients listed (blocked first); --json lists every one.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def evidence(
    entity: str, clients: tuple[str, ...], window_s: int | None, limit: int, as_json: bool
) -> None:
    """Shadow comparisons, mismatches and rate per client over the window, from every
    API process, and whether the gate for `new` would pass them.

    \b
    The gate needs at least CUTOVER_GATE_MIN_SHADOW_COMPARISONS comparisons and a
    mismatch rate of at most CUTOVER_GATE_MAX_SHADOW_MISMATCH_RATE per client. Counts
    reach the SQL store within CUTOVER_SHADOW_EVIDENCE_FLUSH_S of each comparison.
    """
    from stores.runtime import Runtime

    rt = Runtime()
    try:
        name = rt.cfg.entity(entity).name
        policy = ShadowPolicy.from_settings(rt.settings)
        if window_s is not None:
            policy = replace(policy, window_s=window_s)
        now = now_utc()
        if clients:
            wanted = list(dict.fromkeys(clients))
            judged = shadow_verdict(rt.sql, name, wanted, policy=policy, now=now)
        else:
            judged = evidence_of_all(rt.sql, name, policy=policy, now=now)
        since = policy.since(now)
        overall = totals(rt.sql, name, since=since)
    finally:
        rt.close()
    order = sorted(judged.values(), key=lambda e: (e.ok, e.client_id))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "entity": name,
                    "window_s": policy.window_s,
                    "since": since.isoformat(),
                    "min_comparisons": policy.min_comparisons,
                    "max_mismatch_rate": policy.max_mismatch_rate,
                    "totals": {
                        "comparisons": overall.comparisons,
                        "mismatches": overall.mismatches,
                        "errors": overall.errors,
                        "rate": overall.rate,
                    },
                    "clients": [e.to_json() for e in order],
                },
                indent=2,
            )
        )
        return
    _echo(name, policy, overall.comparisons, overall.mismatches, order, limit)


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.2%}"


def _echo(
    entity: str,
    policy: ShadowPolicy,
    comparisons: int,
    mismatches: int,
    order: list[ClientEvidence],
    limit: int,
) -> None:
    blocked = sum(not e.ok for e in order)
    click.secho(
        f"{entity}: shadow evidence, last {span(policy.window_s)} "
        f"(gate: >= {policy.min_comparisons} comparisons, rate <= "
        f"{policy.max_mismatch_rate:.2%})",
        bold=True,
    )
    rate = _rate(mismatches / comparisons if comparisons else None)
    click.echo(f"  all clients: {mismatches} of {comparisons} comparisons mismatched ({rate})")
    if not order:
        click.echo("  no client has shadow comparisons in the window")
        return
    click.echo(f"  {len(order)} client(s), {blocked} short of the gate")
    width = max([6, *(len(e.client_id) for e in order[:limit])])
    click.echo(f"  {'CLIENT':{width}}  {'COMPARED':>9}  {'MISMATCH':>9}  {'RATE':>7}  GATE")
    for e in order[:limit]:
        verdict = "ok" if e.ok else f"SHORT: {e.reason}"
        click.echo(
            f"  {e.client_id:{width}}  {e.comparisons:>9}  {e.mismatches:>9}  "
            f"{_rate(e.rate):>7}  {verdict}"
        )
    if len(order) > limit:
        click.echo(f"  ... and {len(order) - limit} more (--limit, --json)")
