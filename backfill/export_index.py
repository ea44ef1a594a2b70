"""An export folder read client by client: where each client's documents are.

A ``rethinkdb export`` file is in primary-key order, not grouped by client, and has no
index: a per-client job would read the whole file to copy one client, and again to
verify it. :class:`ClientIndexedExport` reads the file once (the client field of each
line, decoded by msgspec without building the document) and keeps, per client, the
byte ranges holding its documents; a client's copy and verification then read only
those ranges, through the export source's own reader (so every document is decoded,
mapped and reported exactly as ``backfill run`` does).

How much that saves depends on the file: when keys group each client's documents
together (a key prefixed by its client, say), a client's range is just its own lines;
when clients are interleaved, the ranges of one client are merged across small gaps
(at most :data:`MAX_RANGES` per client), so a job reads some of the other clients'
lines and skips them. A file not written one document per line cannot be indexed
this way: every client's range is then the whole file (correct, and slow).

The index lives in memory (a few numbers per client range) and is rebuilt when the
file changes (size or modification time), so a corrected export is read afresh.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from core.config import Entity

from .sources import DocStream, ExportSource, PlannedPartition, find_table_file

#: Ranges of one client closer than this many bytes are read as one.
MERGE_GAP = 64 << 10
#: At most this many ranges (partitions) per client; the gap grows until it fits.
MAX_RANGES = 32


@dataclass(frozen=True)
class _Index:
    stamp: tuple[int, int]  # (size, mtime_ns) of the file indexed
    size: int
    ranges: dict[str, list[tuple[int, int, int]]]  # client -> [(start, end, documents)]
    per_line: bool  # False: the layout could not be indexed (ranges = whole file)


def _probe_type(entity: Entity) -> type[msgspec.Struct]:
    return msgspec.defstruct(
        "ClientProbe", [("client", Any, None)], rename={"client": entity.client}
    )


def _client_runs(path: Path, entity: Entity) -> dict[str, list[tuple[int, int, int]]] | None:
    """Per client, its runs of consecutive lines ``(start, end, documents)``; None when
    a line is not one whole document (the layout cannot be indexed)."""
    decode = msgspec.json.Decoder(_probe_type(entity)).decode
    runs: dict[str, list[tuple[int, int, int]]] = {}
    current: str | None = None
    with open(path, "rb") as fh:
        at = 0
        for line in fh:
            begin, at = at, at + len(line)
            text = line.strip()
            if begin == 0:
                text = text.removeprefix(b"\xef\xbb\xbf").lstrip().removeprefix(b"[").lstrip()
            text = text.removesuffix(b",").rstrip()
            if not text or text == b"]":
                continue
            try:
                client = decode(text).client  # type: ignore[attr-defined]
            except (msgspec.DecodeError, msgspec.ValidationError):
                return None
            if not isinstance(client, str) or not client:
                current = None  # a stray: the sweep's, never a client's
                continue
            found = runs.setdefault(client, [])
            if client == current and found:
                start, _, n = found[-1]
                found[-1] = (start, at, n + 1)
            else:
                found.append((begin, at, 1))
            current = client
    return runs


def _merge(runs: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    gap = MERGE_GAP
    while True:
        merged: list[tuple[int, int, int]] = []
        for start, end, n in runs:
            if merged and start - merged[-1][1] <= gap:
                s, e, m = merged[-1]
                merged[-1] = (s, max(e, end), m + n)
            else:
                merged.append((start, end, n))
        if len(merged) <= MAX_RANGES:
            return merged
        gap = max(gap, 1024) * 4  # grows until every range is one


class ClientIndexedExport(ExportSource):
    """An :class:`~backfill.sources.ExportSource` whose per-client plans and scans read
    only the byte ranges holding that client's documents.

    Everything else (its identity, so its runs; whole-table plans; the reader) is the
    export source's own, so a per-client copy from it is the same run as from a plain
    export source.
    """

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self._lock = threading.Lock()
        self._indexes: dict[str, _Index] = {}

    def _index(self, entity: Entity) -> _Index:
        path = find_table_file(self.folder, entity)
        info = path.stat()
        stamp = (info.st_size, info.st_mtime_ns)
        with self._lock:
            known = self._indexes.get(entity.name)
            if known is not None and known.stamp == stamp:
                return known
            runs = _client_runs(path, entity)
            if runs is None:
                index = _Index(stamp, info.st_size, {}, per_line=False)
            else:
                merged = {c: _merge(r) for c, r in runs.items()}
                index = _Index(stamp, info.st_size, merged, per_line=True)
            self._indexes[entity.name] = index
            return index

    def ranges(self, entity: Entity, client: str) -> list[tuple[int, int, int]]:
        """``(start, end, documents)`` byte ranges holding the client's documents."""
        index = self._index(entity)
        if not index.per_line:
            return [(0, index.size, 0)]
        return index.ranges.get(client, [])

    def counts(self, entity: Entity) -> dict[str, int]:
        """Documents per client (empty when the file could not be indexed)."""
        index = self._index(entity)
        return {c: sum(n for _, _, n in r) for c, r in index.ranges.items()}

    # -- backfill ---------------------------------------------------------------------
    def plan(
        self,
        entity: Entity,
        clients: Sequence[str] | None,
        *,
        workers: int,
        active_first: bool,
        priority: Sequence[str] = (),
    ) -> list[PlannedPartition]:
        if clients is None:
            return super().plan(
                entity, clients, workers=workers, active_first=active_first, priority=priority
            )
        name = find_table_file(self.folder, entity).name
        chosen = sorted(
            {(s, e, n) for c in dict.fromkeys(clients) for s, e, n in self.ranges(entity, c)}
        )
        plan: list[PlannedPartition] = []
        for start, end, n in _merge(chosen):
            spec = {"kind": "bytes", "file": name, "start": start, "end": end}
            plan.append(PlannedPartition(f"bytes:{start:015d}", spec, None, n))
        return plan

    # -- verification -----------------------------------------------------------------
    def scan(self, entity: Entity, client: str | None) -> Iterator[Any]:
        if client is None or not self._index(entity).per_line:
            yield from super().scan(entity, client)
            return
        path = find_table_file(self.folder, entity)
        field = entity.client
        for start, end, _ in self.ranges(entity, client):
            for doc, _at in DocStream(path, start, end):
                if isinstance(doc, dict) and doc.get(field) == client:
                    yield doc

    def clients(self, entity: Entity) -> list[str]:
        index = self._index(entity)
        return sorted(index.ranges) if index.per_line else super().clients(entity)
