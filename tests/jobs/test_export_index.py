"""The client-indexed export: a client's ranges hold all of its documents (no servers).

Whatever the layout of clients in the file (grouped, interleaved, strays without a
client, tombstones), reading one client through the index gives exactly the documents
a full pass of the plain export source gives for that client, in the same order, and
the per-client plan covers every one of them; a file that cannot be indexed falls back
to the whole file.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from backfill import export_index
from backfill.export_index import ClientIndexedExport
from backfill.sources import DocStream, ExportSource, find_table_file, write_export
from core.config import Entity, load_config

ROOT = Path(__file__).resolve().parents[2]
ORDERS: Entity = load_config(ROOT / "cutover.toml").entity("orders")

_owner = st.one_of(
    st.sampled_from(["acme", "globex", "initech", "a/b"]),  # most documents have a client
    st.sampled_from([None, 7, ""]),  # strays: no client, not a string, empty
)


@st.composite
def exports(draw: st.DrawFn) -> list[dict[str, Any]]:
    owners = draw(st.lists(_owner, min_size=1, max_size=60))
    docs = []
    for i, owner in enumerate(owners):
        doc: dict[str, Any] = {"id": f"k{i:05d}", "version": draw(st.integers(1, 5))}
        if owner is not None:
            doc["client_id"] = owner
        if draw(st.booleans()):
            doc["status"] = draw(st.text(max_size=8))
        else:
            doc["_deleted"] = True
        docs.append(doc)
    return docs


def _offsets(path: Path, client: str) -> list[int]:
    return [at for doc, at in DocStream(path) if doc.get("client_id") == client]


@settings(max_examples=60, deadline=None)
@given(
    docs=exports(),
    gap=st.sampled_from([0, 300, 64 << 10]),
    max_ranges=st.sampled_from([1, 2, 32]),
)
def test_a_clients_ranges_hold_exactly_its_documents(
    docs: list[dict[str, Any]], gap: int, max_ranges: int
) -> None:
    saved = export_index.MERGE_GAP, export_index.MAX_RANGES
    export_index.MERGE_GAP, export_index.MAX_RANGES = gap, max_ranges
    try:
        with tempfile.TemporaryDirectory() as tmp:
            write_export(Path(tmp), ORDERS, docs)
            plain, indexed = ExportSource(Path(tmp)), ClientIndexedExport(Path(tmp))
            path = find_table_file(Path(tmp), ORDERS)
            assert indexed.clients(ORDERS) == plain.clients(ORDERS)
            for client in plain.clients(ORDERS):
                assert list(indexed.scan(ORDERS, client)) == list(plain.scan(ORDERS, client))
                ranges = indexed.ranges(ORDERS, client)
                assert len(ranges) <= max_ranges
                assert indexed.counts(ORDERS)[client] == sum(n for _, _, n in ranges)
                plan = indexed.plan(ORDERS, [client], workers=1, active_first=False)
                spans = [(p.spec["start"], p.spec["end"]) for p in plan]
                for at in _offsets(path, client):
                    assert any(start <= at < end for start, end in spans), (at, spans)
    finally:
        export_index.MERGE_GAP, export_index.MAX_RANGES = saved


def test_a_file_not_one_document_per_line_is_read_whole(tmp_path: Path) -> None:
    docs = [
        {"id": f"k{i}", "client_id": "acme" if i % 2 else "globex", "version": 1} for i in range(6)
    ]
    folder = tmp_path / "pretty"
    (folder / ORDERS.rethinkdb_db).mkdir(parents=True)
    path = folder / ORDERS.rethinkdb_db / f"{ORDERS.rethinkdb_table}.json"
    path.write_text(json.dumps(docs, indent=2))
    indexed = ClientIndexedExport(folder)
    assert indexed.ranges(ORDERS, "acme") == [(0, path.stat().st_size, 0)]
    assert [d["id"] for d in indexed.scan(ORDERS, "acme")] == ["k1", "k3", "k5"]


def test_the_index_follows_a_rewritten_file(tmp_path: Path) -> None:
    docs = [{"id": f"k{i}", "client_id": "acme", "version": 1} for i in range(3)]
    write_export(tmp_path, ORDERS, docs)
    indexed = ClientIndexedExport(tmp_path)
    assert indexed.counts(ORDERS) == {"acme": 3}
    write_export(tmp_path, ORDERS, [*docs, {"id": "k9", "client_id": "globex", "version": 1}])
    assert indexed.counts(ORDERS) == {"acme": 3, "globex": 1}
