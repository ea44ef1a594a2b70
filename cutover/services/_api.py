"""``up``/``down``/``status``/``env_for``: the public operations over all servers.

Dependencies are resolved here (``unleash`` needs ``postgres``), servers start in a
fixed order and stop in the reverse one, and ``state.json`` is saved after every
start so that a failure half-way never loses track of a running process. No server
is stopped without being named: ``up`` reports every restart of one it was not asked
for, ``down`` returns every server it stopped.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from cutover.services import _proc, _state, postgres, pubsub, reqlite, unleash
from cutover.services._model import Context, Record, ServiceError, ServiceInfo, Spec

SPECS: dict[str, Spec] = {
    s.name: s for s in (pubsub.SPEC, reqlite.SPEC, postgres.SPEC, unleash.SPEC)
}
#: Every server, in start order (a server comes after the ones it requires).
ALL: tuple[str, ...] = tuple(SPECS)
DEFAULT_STATE_DIR = Path(".cutover")


def _validate(names: Iterable[str]) -> list[str]:
    names = list(names)
    unknown = sorted(set(names) - set(SPECS))
    if unknown:
        raise ServiceError(f"unknown service(s) {', '.join(unknown)}; known: {', '.join(ALL)}")
    return names


def _with_requirements(names: Iterable[str]) -> list[str]:
    wanted: set[str] = set()
    todo = _validate(names)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(SPECS[name].requires)
    return [n for n in ALL if n in wanted]


def _with_dependents(names: Iterable[str]) -> set[str]:
    chosen = set(_validate(names))
    grew = True
    while grew:
        extra = {n for n, s in SPECS.items() if set(s.requires) & chosen} - chosen
        chosen |= extra
        grew = bool(extra)
    return chosen


def _probe(record: Record) -> tuple[bool, str]:
    """Alive (right PID, right process) and answering its health check."""
    info = record.info
    if not _proc.is_alive(info.pid, record.start_ticks):
        return False, f"process {info.pid} is not running"
    spec = SPECS.get(info.name)
    if spec is None:
        return False, "unknown service"
    try:
        return spec.check(info)
    except Exception as exc:  # a health check must report, never raise
        return False, f"health check error: {type(exc).__name__}: {exc}"


def _stop(record: Record) -> None:
    spec = SPECS.get(record.info.name)
    sig = spec.stop_signal if spec else signal.SIGTERM
    _proc.stop_pid(record.info.pid, record.start_ticks, sig=sig)


def _save(state_dir: Path, records: Mapping[str, Record]) -> None:
    _state.save(state_dir, records)
    _state.write_env(state_dir, env_for(r.info for r in records.values()))


def _quiet(message: str) -> None:
    """The default ``report`` of :func:`up`: say nothing."""


def _restart_reason(
    spec: Spec, old: Record | None, moved: Mapping[str, int], touched: list[str]
) -> str | None:
    """Why a server must start (again), or None when its recorded process can stay.

    A requirement that came back on another port (``moved``) leaves it pointing at a
    dead address; one that came back on the same port (``touched``) only costs it a
    reconnect, so it stays if it still answers its health check.
    """
    if old is None:
        return "not running"
    for req in spec.requires:
        if req in moved:
            return f"it runs on {req}, which moved to port {moved[req]}"
    healthy, detail = _probe(old)
    if healthy:
        return None
    return f"it runs on {touched[0]}, which restarted, and {detail}" if touched else detail


def up(
    names: Iterable[str] = ALL,
    *,
    state_dir: Path = DEFAULT_STATE_DIR,
    fsync: bool = False,
    report: Callable[[str], None] = _quiet,
) -> dict[str, ServiceInfo]:
    """Start the named servers (and what they require); reuse healthy running ones.

    A server that starts again comes back on its last port (remembered across
    ``down``) unless something else listens there; then it takes a free port and
    ``report`` says so. A recorded server that was not asked for is never stopped
    silently: when a requirement of it restarted, it is restarted too if that
    requirement moved to another port or it no longer answers, else kept running;
    either way ``report`` says which, and it is in the result.

    Writes ``<state_dir>/services/state.json`` and ``<state_dir>/services.env``. A server
    that fails raises ServiceError (message ends with its log's tail); servers started
    before it keep running and stay recorded, so ``down`` still finds them.
    """
    state_dir = state_dir.resolve()
    order = _with_requirements(names)
    started: dict[str, ServiceInfo] = {}
    moved: dict[str, int] = {}
    restarted: set[str] = set()
    with _state.locked(state_dir):
        records = _state.load(state_dir)
        ctx = Context(state_dir, fsync=fsync, ports=_state.load_ports(state_dir))
        for name in ALL:
            spec, old = SPECS[name], records.get(name)
            touched = [req for req in spec.requires if req in restarted]
            if name not in order and not (old and touched):
                continue
            reason = _restart_reason(spec, old, moved, touched)
            if reason is None:
                assert old is not None
                started[name] = old.info
                if touched:
                    report(f"{name}: kept running ({touched[0]} came back on the same port)")
                continue
            record = _start(ctx, spec, old, records, started)
            started[name] = record.info
            restarted.add(name)
            _report_start(report, name, old, reason, ctx.ports.get(name), record.info.port)
            if old is None or old.info.port != record.info.port:
                moved[name] = record.info.port
    return started


def _start(
    ctx: Context,
    spec: Spec,
    old: Record | None,
    records: dict[str, Record],
    started: Mapping[str, ServiceInfo],
) -> Record:
    """Stop the old process (if any), start a new one; state saved after each step."""
    if old is not None:
        _stop(old)
        del records[spec.name]
        _save(ctx.state_dir, records)
    record = spec.start(ctx, {req: started[req] for req in spec.requires})
    records[spec.name] = record
    _save(ctx.state_dir, records)
    return record


def _report_start(
    report: Callable[[str], None],
    name: str,
    old: Record | None,
    reason: str,
    last_port: int | None,
    port: int,
) -> None:
    """Say where a server that ran here before listens now and, if it was recorded,
    why it was restarted. A first start is not reported (the caller lists it)."""
    if last_port is None:
        return
    where = f"on its last port {port}"
    if last_port != port:
        where = f"on port {port}: its last port {last_port} is taken"
    report(f"{name}: restarted {where} ({reason})" if old else f"{name}: started {where}")


def down(names: Iterable[str] | None = None, *, state_dir: Path = DEFAULT_STATE_DIR) -> list[str]:
    """Stop the named servers (default: all recorded) and those that require them.

    Returns the names stopped, in stop order (dependents first), so a caller can say
    which servers went down besides the ones it named. Safe when a recorded process is
    already gone or its PID now belongs to another program (that one is left alone).
    """
    state_dir = state_dir.resolve()
    stopped: list[str] = []
    with _state.locked(state_dir):
        records = _state.load(state_dir)
        chosen = set(records) if names is None else _with_dependents(names)
        order = [n for n in ALL if n in records] + [n for n in records if n not in SPECS]
        errors = []
        for name in reversed(order):
            if name not in chosen:
                continue
            try:
                _stop(records[name])
            except ServiceError as exc:
                errors.append(f"{name}: {exc}")
                continue
            del records[name]
            _save(state_dir, records)
            stopped.append(name)
    if errors:
        raise ServiceError("could not stop: " + "; ".join(errors))
    return stopped


def status(*, state_dir: Path = DEFAULT_STATE_DIR) -> list[tuple[ServiceInfo, bool, str]]:
    """Each recorded server with whether it is healthy and why (no secrets)."""
    records = _state.load(state_dir.resolve())
    order = [n for n in ALL if n in records] + [n for n in records if n not in SPECS]
    return [(records[n].info, *_probe(records[n])) for n in order]


def env_for(infos: Mapping[str, ServiceInfo] | Iterable[ServiceInfo]) -> dict[str, str]:
    """The ``CUTOVER_*`` settings that point the project at these servers.

    PostgreSQL goes to ``CUTOVER_TEST_POSTGRES_DSN`` (for tests), not ``CUTOVER_SQL_DSN``:
    the embedded default store stays SQLite.
    """
    items = infos.values() if isinstance(infos, Mapping) else infos
    env: dict[str, str] = {}
    for info in items:
        if info.name == pubsub.NAME:
            env["CUTOVER_PUBSUB_EMULATOR_HOST"] = f"{info.host}:{info.port}"
        elif info.name == reqlite.NAME:
            env["CUTOVER_RETHINKDB_HOST"] = info.host
            env["CUTOVER_RETHINKDB_PORT"] = str(info.port)
        elif info.name == postgres.NAME:
            env["CUTOVER_TEST_POSTGRES_DSN"] = info.extra["odbc_dsn"]
        elif info.name == unleash.NAME:
            env["CUTOVER_UNLEASH_URL"] = info.url
            env["CUTOVER_UNLEASH_ADMIN_TOKEN"] = info.extra["admin_token"]
            env["CUTOVER_UNLEASH_BACKEND_TOKEN"] = info.extra["backend_token"]
    return env
