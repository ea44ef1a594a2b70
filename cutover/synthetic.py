"""Synthetic entity histories for tests, benchmarks and the demo.

Generates what a real producer would publish for an entity (several clients, many
ids, growing versions, deletes), optionally with the faults a real transport adds
(duplicates, reordering), plus the reference model every test compares against.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from core.config import ColumnType, Entity
from core.events import Event
from stores.mapping import Row, row_from_event

_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def synthetic_value(kind: ColumnType, rng: random.Random, max_length: int | None = None) -> Any:
    if kind is ColumnType.STRING:
        n = min(max_length or 24, rng.randint(3, 24))
        return "".join(rng.choices(string.ascii_letters + "éü ", k=n))
    if kind is ColumnType.INT:
        return rng.randint(-(2**40), 2**40)
    if kind is ColumnType.FLOAT:
        return round(rng.uniform(-1e6, 1e6), 4)
    if kind is ColumnType.BOOL:
        return rng.random() < 0.5
    if kind is ColumnType.DATETIME:
        millis = rng.randint(0, 10**10)
        return (_EPOCH + timedelta(milliseconds=millis)).isoformat().replace("+00:00", "Z")
    return {"tags": rng.sample(["a", "b", "c", "d"], 2), "n": rng.randint(0, 9)}


def synthetic_data(entity: Entity, rng: random.Random) -> dict[str, Any]:
    return {c.field: synthetic_value(c.type, rng, c.max_length) for c in entity.columns}


def client_ids(n: int) -> list[str]:
    return [f"client-{i:03d}" for i in range(n)]


def key_for(client: str, i: int) -> str:
    return f"{client}-{i:06d}"


def generate_history(
    entity: Entity,
    *,
    clients: int = 3,
    ids_per_client: int = 10,
    versions: int = 3,
    delete_rate: float = 0.1,
    seed: int = 0,
    start: datetime | None = None,
) -> list[Event]:
    """Every change of every id, in version order per id (what the producer emits).

    Changes happen a millisecond apart from ``start`` (default: now), so event lag
    (now minus ``occurred_at``) reads like a live stream's.
    """
    rng = random.Random(seed)
    origin = start or datetime.now(UTC)
    events: list[Event] = []
    for client in client_ids(clients):
        for i in range(ids_per_client):
            key = key_for(client, i)
            n_versions = rng.randint(1, versions)
            for v in range(1, n_versions + 1):
                last = v == n_versions
                op: Literal["upsert", "delete"] = (
                    "delete" if last and rng.random() < delete_rate else "upsert"
                )
                events.append(
                    Event(
                        event_id=f"{entity.name}-{key}-v{v}",
                        entity=entity.name,
                        op=op,
                        id=key,
                        client_id=client,
                        version=v,
                        occurred_at=origin + timedelta(milliseconds=len(events)),
                        data={} if op == "delete" else synthetic_data(entity, rng),
                    )
                )
    return events


def with_faults(
    events: list[Event], *, duplicate_rate: float = 0.1, shuffle: bool = True, seed: int = 0
) -> list[Event]:
    """The same events as a real transport may deliver them: duplicated and reordered."""
    rng = random.Random(seed)
    out = list(events)
    out += [e for e in events if rng.random() < duplicate_rate]
    if shuffle:
        rng.shuffle(out)
    return out


def reference(entity: Entity, events: Iterable[Event]) -> dict[str, Row]:
    """The state every store must end in: per id, the highest (version, deleted) wins."""
    state: dict[str, Row] = {}
    for event in events:
        row = row_from_event(entity, event)
        held = state.get(row.key)
        if held is None or row.rank > held.rank:
            state[row.key] = row
    return state
