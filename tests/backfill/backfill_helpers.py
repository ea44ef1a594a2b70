"""Helpers shared by the backfill tests (imported as a plain module, unique name)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from backfill.progress import Progress
from backfill.runner import Options
from core.config import Entity
from cutover.synthetic import generate_history, reference
from stores.mapping import Row, document_from_row, same_value
from stores.sql import SqlStore

#: Fast settings for tests: unthrottled, quick polls and retries.
FAST = Options(rate=0, batch=50, poll_s=0.05, retry_base_s=0.05, lease_ttl_s=30)


def quiet(title: str, total: int | None, done: int) -> Progress:
    return Progress(title, total, done, tty=False, interval_s=3600, emit=lambda line: None)


def history_state(
    entity: Entity, *, clients: int = 3, ids: int = 40, seed: int = 1, delete_rate: float = 0.2
) -> dict[str, Row]:
    """The newest row of every id of a synthetic history (tombstones included)."""
    events = generate_history(
        entity, clients=clients, ids_per_client=ids, seed=seed, delete_rate=delete_rate
    )
    return reference(entity, events)


def docs_for(entity: Entity, rows: Iterable[Row]) -> list[dict[str, Any]]:
    """Old-store documents (tombstones carry the deleted marker), in key order."""
    return [document_from_row(entity, r) for r in sorted(rows, key=lambda r: r.key)]


def assert_state(sql: SqlStore, entity: Entity, expected: dict[str, Row]) -> None:
    """The SQL store holds exactly the expected rows: live ones equal, deleted ones not live."""
    held = {r.key: r for r in sql.scan(entity, None, include_deleted=True)}
    problems = []
    for key, want in expected.items():
        got = held.get(key)
        if want.deleted:
            if got is not None and not got.deleted:
                problems.append(f"{key}: deleted at v{want.version} but live v{got.version}")
            continue
        if got is None or got.deleted:
            problems.append(f"{key}: missing (want v{want.version})")
            continue
        if got.version != want.version:
            problems.append(f"{key}: v{got.version}, want v{want.version}")
        for col in entity.columns:
            if not same_value(col, got.values.get(col.name), want.values.get(col.name)):
                problems.append(f"{key}: {col.name} differs")
    extra = [k for k, r in held.items() if k not in expected and not r.deleted]
    problems += [f"{k}: unexpected live row" for k in extra]
    assert not problems, "\n".join(problems[:50])


def child_pids(parent: int, marker: bytes) -> list[int]:
    """Processes whose parent is ``parent`` and whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and marker in cmdline:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
