"""``cutover demo``: a rehearsal of the migration on embedded defaults.

Starts the local servers it needs, creates both stores, publishes a handful of
events, pulls them back through a subscription and writes them to both stores with
the version rules, then shows both stores agree. Stops what it started unless
``--keep``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table as RichTable

from stores.mapping import row_from_document, row_from_event

from . import services
from .events import Event, parse_event
from .pubsub import (
    ensure_topic,
    publish_events,
    publisher,
    subscriber,
    subscription_path,
    topic_path,
)
from .runtime import Runtime
from .settings import Settings
from .synthetic import generate_history, reference, with_faults

console = Console()


@dataclass
class Phases:
    """Times each phase so the summary can show where the time went."""

    timings: dict[str, float] = field(default_factory=dict)

    def run(self, name: str, step: Callable[[], object]) -> object:
        console.rule(f"[bold]{name}")
        started = time.monotonic()
        result = step()
        self.timings[name] = time.monotonic() - started
        return result


def _pull_all(settings: Settings, sub: str, expected: int, timeout_s: float = 60) -> list[Event]:
    """Synchronous pull until ``expected`` messages arrived; ack each after decoding."""
    client = subscriber(settings)
    path = subscription_path(settings, sub)
    got: list[Event] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < expected and time.monotonic() < deadline:
        response = client.pull(subscription=path, max_messages=500, timeout=10)
        if not response.received_messages:
            continue
        got.extend(parse_event(m.message.data) for m in response.received_messages)
        client.acknowledge(
            subscription=path, ack_ids=[m.ack_id for m in response.received_messages]
        )
    client.close()
    return got


def rehearse(state_dir: Path, keep: bool) -> None:
    phases = Phases()
    infos = phases.run(
        "Start local servers (Pub/Sub, RethinkDB)",
        lambda: services.up(["pubsub", "rethinkdb"], state_dir=state_dir),
    )
    assert isinstance(infos, dict)
    for info in infos.values():
        console.print(f"  {info.name:10} {info.url}  (pid {info.pid})")
    env = services.env_for(infos.values())
    settings = Settings(
        _env_file=None,
        state_dir=state_dir,
        pubsub_emulator_host=env["CUTOVER_PUBSUB_EMULATOR_HOST"],
        rethinkdb_port=int(env["CUTOVER_RETHINKDB_PORT"]),
    )
    rt = Runtime(settings)
    orders = rt.cfg.entity("orders")
    try:
        phases.run("Create stores", lambda: (rt.sql.ensure_schema(), rt.rethink.ensure_tables()))
        console.print(f"  SQL store: {rt.settings.dialect} ({rt.settings.sqlite_path})")
        history = generate_history(orders, clients=3, ids_per_client=4, versions=3, seed=1)
        delivered = with_faults(history, duplicate_rate=0.3, seed=1)
        sub = "demo-orders-sqlstore"

        def publish() -> None:
            client = publisher(settings)
            ensure_topic(settings, orders.topic, client)
            sc = subscriber(settings)
            try:
                sc.create_subscription(
                    name=subscription_path(settings, sub), topic=topic_path(settings, orders.topic)
                )
            except Exception as exc:
                if "exists" not in str(exc).lower():
                    raise
            finally:
                sc.close()
            n = publish_events(settings, delivered, client=client)
            console.print(
                f"  published {n} events ({len(history)} changes + duplicates, reordered)"
            )

        phases.run("Publish events", publish)
        received = phases.run("Read them back", lambda: _pull_all(settings, sub, len(delivered)))
        assert isinstance(received, list)
        console.print(f"  received {len(received)} events")

        def write() -> None:
            rows = [row_from_event(orders, e) for e in received]
            console.print(f"  SQL store:  {rt.sql.apply(orders, rows)}")
            console.print(f"  RethinkDB:  {rt.rethink.write(orders, rows)}")

        phases.run("Write both stores (version rules)", write)

        def compare() -> None:
            expected = reference(orders, history)
            sql = {r.key: r for r in rt.sql.scan(orders, None)}
            old = {d["id"]: row_from_document(orders, d) for d in rt.rethink.scan(orders)}
            table = RichTable("key", "client", "version", "deleted", "status", "SQL = RethinkDB")
            for key, row in sorted(expected.items()):
                same = sql.get(key) == row and (old.get(key) or row).rank == row.rank
                table.add_row(
                    key,
                    row.client_id,
                    str(row.version),
                    str(row.deleted),
                    str(row.values.get("status")),
                    "yes" if same else "NO",
                )
            console.print(table)
            if sql != expected:
                raise click.ClickException("the SQL store does not match the reference state")

        phases.run("Compare with the reference", compare)
    finally:
        rt.close()
        if not keep:
            services.down(state_dir=state_dir)
    console.rule("[bold]Summary")
    for name, seconds in phases.timings.items():
        console.print(f"  {name:40} {seconds:6.2f} s")
    if keep:
        console.print(
            f"servers left running; stop them with: cutover services down --state-dir {state_dir}"
        )


@click.command("demo")
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=Path(".cutover/demo"),
    show_default=True,
    help="Where the demo keeps its servers and stores.",
)
@click.option("--keep", is_flag=True, help="Leave the servers running at the end.")
def demo(state_dir: Path, keep: bool) -> None:
    """Rehearse the migration end to end on embedded defaults (starts its own servers)."""
    rehearse(state_dir, keep)
