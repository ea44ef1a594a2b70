"""The ``cutover`` console script: one subcommand group per area.

Known failures (bad config, a store that is down, a malformed event) end with a
one-line message and exit code 2 instead of a traceback; secrets are redacted from
anything printed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from core.config import ConfigError
from core.eventfile import read_events
from core.events import EventError, event_schema
from core.redaction import redact
from stores.mapping import MappingError
from stores.rethink import RethinkUnavailable
from stores.runtime import Runtime
from stores.sql import StoreUnavailable, get_dialect
from stores.sql.schema import create_table_sql, entity_table

KNOWN_ERRORS = (ConfigError, StoreUnavailable, RethinkUnavailable, EventError, MappingError)


class _Root(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KNOWN_ERRORS as exc:
            click.secho(f"error: {redact(str(exc))}", fg="red", err=True)
            sys.exit(2)


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """cutover: move a live product from RethinkDB to SQL Server with no downtime.

    \b
    The migration, step by step (README: "Runbook"):
      1. cutover subs add NAME      double-write: a new subscription fills SQL Server
      2. cutover backfill run E     copy history from RethinkDB, resumable, throttled
      3. cutover verify E           prove both stores agree, per client
      4. cutover flags set E C ...  move a client's reads: old -> shadow -> new
      5. cutover subs drop NAME     clean up the legacy subscription at the end

    Settings come from CUTOVER_* environment variables (see `cutover settings`);
    entities and subscriptions from cutover.toml.
    """


# -- settings -------------------------------------------------------------------------
@cli.command("settings")
def show_settings() -> None:
    """Print the effective settings (secrets masked) and the config file's entities."""
    rt = Runtime()
    for name, value in rt.settings.model_dump().items():
        click.echo(f"{name:32} {redact(str(value))}")
    click.echo(f"{'dialect':32} {rt.settings.dialect}")
    click.echo(f"{'entities':32} {', '.join(rt.cfg.entities)}")
    click.echo(f"{'subscriptions':32} {', '.join(rt.cfg.subscriptions)}")


# -- db -------------------------------------------------------------------------------
@cli.group()
def db() -> None:
    """The SQL store's schema."""


@db.command("init")
def db_init() -> None:
    """Create or upgrade every table (entities and cutover's own), idempotently."""
    from .tables import all_tables

    rt = Runtime()
    changes = rt.sql.ensure_schema(all_tables())
    rt.rethink.ensure_tables()
    click.echo("\n".join(changes) if changes else "schema up to date")


@db.command("ddl")
@click.option("--dialect", type=click.Choice(["mssql", "postgresql", "sqlite"]), default="mssql")
def db_ddl(dialect: str) -> None:
    """Print the DDL for the configured entities (T-SQL by default), for review by a DBA."""
    rt = Runtime()
    d = get_dialect(dialect)
    sep = "\nGO\n" if dialect == "mssql" else ";\n"
    for entity in rt.cfg.entities.values():
        click.echo(sep.join(create_table_sql(d, entity_table(entity))) + sep)


# -- events ---------------------------------------------------------------------------
@cli.group()
def events() -> None:
    """The event contract producers publish to Pub/Sub."""


@events.command("schema")
def events_schema() -> None:
    """Print the JSON Schema of one event."""
    click.echo(json.dumps(event_schema(), indent=2))


@events.command("publish")
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON-lines file: one UTF-8 event per line, lines split on \\n only (as message bodies).",
)
@click.option("--generate", type=int, help="Generate about N synthetic events instead.")
@click.option("--entity", help="Entity for --generate.")
@click.option("--clients", type=int, default=3, show_default=True, help="Clients for --generate.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--topic", help="Publish to this topic instead of the entity's.")
@click.option("--dry-run", is_flag=True, help="Validate and count; publish nothing.")
def events_publish(
    path: Path | None,
    generate: int | None,
    entity: str | None,
    clients: int,
    seed: int,
    topic: str | None,
    dry_run: bool,
) -> None:
    """Publish events from a file, or synthetic ones, with the contract's attributes.

    Every line of a file is validated first, exactly as the worker validates a
    message body: one bad line (not UTF-8, not JSON, not the contract) stops the
    command before anything is published, naming the line. Lines end at \\n only
    (a U+2028 inside a string is part of the string); blank lines and a \\r before
    the \\n are ignored.
    """
    from core.pubsub import ensure_topic, publish_events, publisher

    from .synthetic import generate_history

    rt = Runtime()
    if (path is None) == (generate is None):
        raise click.UsageError("give exactly one of --file or --generate")
    if path is not None:
        batch = read_events(path)
    else:
        if not entity:
            raise click.UsageError("--generate needs --entity")
        ent = rt.cfg.entity(entity)
        per_client = max(1, (generate or 0) // (clients * 2))
        batch = generate_history(ent, clients=clients, ids_per_client=per_client, seed=seed)
    for event in batch:
        rt.cfg.entity(event.entity)  # unknown entity: fail before publishing anything
    if dry_run:
        click.echo(f"{len(batch)} valid events; nothing published (dry run)")
        return
    client = publisher(rt.settings)
    for name in {topic or rt.cfg.entity(e.entity).topic for e in batch}:
        ensure_topic(rt.settings, name, client)
    by_topic: dict[str, list[Any]] = {}
    for event in batch:
        by_topic.setdefault(topic or rt.cfg.entity(event.entity).topic, []).append(event)
    total = sum(
        publish_events(rt.settings, evs, topic=t, client=client) for t, evs in by_topic.items()
    )
    click.echo(f"published {total} events to {', '.join(sorted(by_topic))}")


def _attach_areas() -> None:
    """Each area owns its subcommands; the root (the shell, above every area) mounts
    them by explicit imports, so a missing or broken area fails loudly."""
    from app.cli import serve
    from backfill.cli import backfill, verify
    from backfill.jobs_cli import jobs
    from flags.cli import flags
    from flags.rollout_cli import rollout
    from subscribers.cli import subs

    from .demo import demo
    from .services.cli import group as services_group

    cli.add_command(services_group, "services")
    for command in (subs, backfill, verify, jobs, flags, rollout, serve, demo):
        cli.add_command(command)


_attach_areas()


def main() -> None:
    cli(prog_name="cutover")
