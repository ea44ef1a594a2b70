"""``cutover services up|down|status``: the local servers from the command line.

Attached to the root CLI as ``group``. Tables show addresses and PIDs, never tokens.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cutover.services import _state
from cutover.services._api import ALL, DEFAULT_STATE_DIR, SPECS, down, status, up
from cutover.services._model import ServiceError, ServiceInfo

_console = Console()

state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE_DIR,
    envvar="CUTOVER_STATE_DIR",
    show_default=True,
    help="Where servers keep their data, logs and state.json (env CUTOVER_STATE_DIR).",
)
names_argument = click.argument("names", nargs=-1, type=click.Choice(ALL), metavar="[NAME]...")


def _say(message: str) -> None:
    _console.print(escape(message))


def _address(info: ServiceInfo) -> str:
    return f"{info.host}:{info.port}"


def _table(rows: Iterable[tuple[ServiceInfo, bool | None, str]]) -> Table:
    """Name, address, PID and health; ``url`` is shown too as it never holds a secret."""
    table = Table("service", "address", "pid", "health", "url")
    for info, healthy, detail in rows:
        mark = "" if healthy is None else ("[green]healthy[/]" if healthy else "[red]DOWN[/]")
        health = f"{mark} {escape(detail)}".strip() or "started"
        table.add_row(info.name, _address(info), str(info.pid), health, escape(info.url))
    return table


@click.group("services")
def services() -> None:
    """Run the local servers the project is tested against.

    pubsub (cloudbox gRPC Pub/Sub), rethinkdb (reqlite), postgres (a private
    PostgreSQL cluster) and unleash (unleash-server on that PostgreSQL). Each listens on
    a free 127.0.0.1 port, never a standard one, and keeps its files under
    STATE_DIR/services/NAME/. `up` writes STATE_DIR/services.env with the CUTOVER_*
    settings that point the project at them.
    """


@services.command("up")
@names_argument
@state_dir_option
@click.option(
    "--fsync/--no-fsync",
    default=False,
    show_default=True,
    help="PostgreSQL fsync; off is faster and fine for tests and demos.",
)
def up_command(names: tuple[str, ...], state_dir: Path, fsync: bool) -> None:
    """Start NAME... (default: all) and what they need; reuse healthy running ones.

    NAME is one of: pubsub, rethinkdb, postgres, unleash (unleash needs postgres).

    A server starting again comes back on its last port unless that port is taken
    (then on a free one, and says so). Restarting postgres keeps unleash running when
    postgres is back on the same port and unleash still answers; otherwise unleash is
    restarted too. Every such restart is printed with its reason.

    Installs what is missing first (npm packages into .cache/node, cloudbox's patch).
    Servers keep running after this command exits; stop them with `down`.
    """
    began = time.monotonic()
    try:
        infos = up(names or ALL, state_dir=state_dir, fsync=fsync, report=_say)
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from exc
    _console.print(_table((info, None, "") for info in infos.values()))
    env_path = _state.env_file(state_dir)
    _console.print(f"ready in {time.monotonic() - began:.1f} s; settings written to {env_path}")
    _console.print(f"logs: {state_dir / 'services'}/NAME/NAME.log")


@services.command("down")
@names_argument
@state_dir_option
def down_command(names: tuple[str, ...], state_dir: Path) -> None:
    """Stop NAME... (default: all recorded) and the servers that need them (named).

    Data directories are kept; a server whose process is already gone is just forgotten.
    """
    try:
        stopped = down(names or None, state_dir=state_dir)
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from exc
    if not stopped:
        _console.print("nothing was running")
        return
    _console.print("stopped " + ", ".join(stopped))
    for name in stopped:
        if names and name not in names:
            on = ", ".join(n for n in SPECS[name].requires if n in stopped)
            _console.print(f"{name} was stopped too: it runs on {on}")


@services.command("status")
@state_dir_option
def status_command(state_dir: Path) -> None:
    """Show each recorded server and check its health; exit 1 if any is unhealthy."""
    rows = status(state_dir=state_dir)
    if not rows:
        _console.print(f"no servers recorded in {_state.state_file(state_dir)}")
        return
    _console.print(_table(rows))
    if not all(healthy for _, healthy, _ in rows):
        raise SystemExit(1)


#: Attached to the root CLI (``cutover services ...``).
group: click.Group = services
