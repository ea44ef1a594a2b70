"""Helpers shared by several test folders (tests/ is on sys.path via its conftest)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

from core.config import Config
from core.settings import Settings
from cutover.synthetic import generate_history, reference
from stores.mapping import Row
from stores.runtime import Runtime
from stores.sql import SqlStore, bookkeeping
from subscribers.tables import FAILURES


def make_runtime(settings: Settings, cfg: Config) -> Runtime:
    """A runtime whose SQL tables and RethinkDB tables exist."""
    rt = Runtime(settings, cfg)
    rt.sql.ensure_schema()
    rt.rethink.ensure_tables()
    return rt


def seed_stores(
    rt: Runtime, entity: str, *, clients: int, ids: int, seed: int, delete_rate: float = 0.1
) -> list[Row]:
    """The same synthetic history in both stores (they agree), tombstones included."""
    ent = rt.cfg.entity(entity)
    history = generate_history(
        ent, clients=clients, ids_per_client=ids, seed=seed, delete_rate=delete_rate
    )
    rows = list(reference(ent, history).values())
    rt.sql.apply(ent, rows)
    rt.rethink.write(ent, rows)
    return rows


def insert_failures(store: SqlStore, entries: Iterable[Mapping[str, Any]]) -> None:
    """Failure-log entries as they would be after their life so far (times, status),
    written straight to the table (tests of retention need entries of any age). The
    caller has created the table (``store.ensure_schema(subscribers.tables.TABLES)``)."""
    with store.transaction() as cur:
        for entry in entries:
            values = {
                "entity": "orders",
                "data": '{"not": "an event"}',
                "data_encoding": "utf-8",
                "attributes": {},
                "ordering_key": "",
                "error": "event does not meet the contract",
                "attempts": 1,
                "resolved_at": None,
                "resolution": None,
                **entry,
            }
            if values["resolved_at"] is not None and values["resolution"] is None:
                values["resolution"] = "applied"
            cur.execute(*bookkeeping.insert_sql(store.dialect, FAILURES, values))


def process_tree(pid: int) -> list[int]:
    """``pid`` and every descendant (from /proc), e.g. a postmaster and its backends."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        parent = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


@contextmanager
def frozen(pid: int) -> Iterator[None]:
    """A server frozen (SIGSTOP of its whole process tree) for the block, then resumed.

    Its sockets stay open and the kernel still accepts connections, so clients see a
    server that has stopped answering, not one that is down.
    """
    pids = process_tree(pid)
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    try:
        yield
    finally:
        for p in reversed(pids):
            with suppress(ProcessLookupError):
                os.kill(p, signal.SIGCONT)
